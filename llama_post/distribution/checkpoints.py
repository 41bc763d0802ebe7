"""Checkpoints as a resource of their own, served by the stack over whatever runs the jobs.

Every checkpoint of every job is listed (per job, or across the caller's jobs, paged), described
(type, size, when made, whether published, when it expires), deleted (the model it is served as
is unregistered with it), published and unpublished (by its job's owner; a published checkpoint,
and the model made from it, is readable by every key), given a TTL (a sweeper removes it when it
expires, and the job's events say so), and downloaded as a tar.gz (the provider's
`checkpoint_archive`) from a URL that carries its own expiring token, so it is fetched with no
credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from llama_post.apis.models import Models
from llama_post.apis.post_training import Checkpoint
from llama_post.apis.post_training.jobs import (
    ArchiveUrl,
    CheckpointList,
    CheckpointPage,
    CheckpointTTLRequest,
    DeletedCheckpoint,
    JobStatus,
    ListCheckpointsRequest,
)
from llama_post.distribution.owners import Owners
from llama_post.errors import ConflictError, NotFoundError, PermissionDeniedError
from llama_post.schema import FileContent
from llama_post.storage import Database

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS expiry (
    job_uuid TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (job_uuid, checkpoint_id)
);
"""
ARCHIVE_ROUTE = "/v1/post-training/checkpoint-archives/"
FILE_ROUTE = "/v1/post-training/checkpoint-files/"
EXPORT_ROUTE = "/v1/post-training/export-downloads/"
ARCHIVE_SECONDS = 3600
SWEEP_SECONDS = 5.0
# The server's own address as the current request reached it, for the URLs it hands out.
BASE_URL: ContextVar[str] = ContextVar("llama_post_base_url", default="http://127.0.0.1:8321")


class Checkpoints:
    """The checkpoint routes of PostTraining, over `jobs` (everything else passes to it).
    `raw` is what runs the jobs, unguarded: a published checkpoint of another owner's job is
    read through it, and every owner check here is this class's own."""

    def __init__(
        self, jobs: Any, raw: Any, models: Models, owners: Owners, storage_dir: Path
    ) -> None:
        self.jobs = jobs
        self.raw = raw
        self.models = models
        self.owners = owners
        self.db = Database(storage_dir / "checkpoints.db", SCHEMA)
        self.secret = _secret(storage_dir / "archive.key")
        self._sweeper: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["jobs"], name)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.db.close()

    # -- reading -------------------------------------------------------------------------------

    async def list_job_checkpoints(self, job_uuid: str) -> CheckpointList:
        found = (await self.raw.get_job_artifacts(job_uuid)).checkpoints
        visible = [c for c in found if self.owners.visible("checkpoint", c.identifier)]
        return CheckpointList(data=[self._described(c) for c in visible])

    async def list_checkpoints(self, request: ListCheckpointsRequest) -> CheckpointPage:
        """The caller's checkpoints (an admin's: everyone's), newest first."""
        found: list[Checkpoint] = []
        for job in (await self.raw.list_jobs()).data:
            if self.owners.owns("job", job.job_uuid):
                found += (await self.raw.get_job_artifacts(job.job_uuid)).checkpoints
        found.sort(key=lambda c: (c.created_at, c.identifier), reverse=True)
        page = found[request.offset : request.offset + request.limit]
        return CheckpointPage(
            data=[self._described(c) for c in page],
            total=len(found),
            limit=request.limit,
            offset=request.offset,
        )

    async def get_checkpoint(self, job_uuid: str, checkpoint_id: str) -> Checkpoint:
        return self._described(await self._find(job_uuid, checkpoint_id))

    # -- changing ------------------------------------------------------------------------------

    async def delete_checkpoint(self, job_uuid: str, checkpoint_id: str) -> DeletedCheckpoint:
        found = await self._mine(job_uuid, checkpoint_id)
        removed = await self._remove(found, "deleted by its owner")
        return DeletedCheckpoint(identifier=found.identifier, model_removed=removed)

    async def publish_checkpoint(self, job_uuid: str, checkpoint_id: str) -> Checkpoint:
        found = await self._mine(job_uuid, checkpoint_id)
        if self.owners.is_public("checkpoint", found.identifier):
            raise ConflictError(f"checkpoint {found.identifier} is already published")
        self._publish(found, True)
        return self._described(found)

    async def unpublish_checkpoint(self, job_uuid: str, checkpoint_id: str) -> Checkpoint:
        found = await self._mine(job_uuid, checkpoint_id)
        if not self.owners.is_public("checkpoint", found.identifier):
            raise ConflictError(f"checkpoint {found.identifier} is not published")
        self._publish(found, False)
        return self._described(found)

    async def set_checkpoint_ttl(
        self, job_uuid: str, checkpoint_id: str, request: CheckpointTTLRequest
    ) -> Checkpoint:
        found = await self._mine(job_uuid, checkpoint_id)
        if request.ttl_seconds is None:
            self.db.execute(
                "DELETE FROM expiry WHERE job_uuid = ? AND checkpoint_id = ?",
                (job_uuid, checkpoint_id),
            )
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO expiry (job_uuid, checkpoint_id, expires_at) "
                "VALUES (?, ?, ?)",
                (job_uuid, checkpoint_id, int(time.time()) + request.ttl_seconds),
            )
        return self._described(found)

    # -- archives ------------------------------------------------------------------------------

    async def checkpoint_archive_url(self, job_uuid: str, checkpoint_id: str) -> ArchiveUrl:
        await self._find(job_uuid, checkpoint_id)
        expires = int(time.time()) + ARCHIVE_SECONDS
        token = self._token([job_uuid, checkpoint_id, expires])
        return ArchiveUrl(url=f"{BASE_URL.get()}{ARCHIVE_ROUTE}{token}", expires_at=expires)

    async def download_checkpoint_archive(self, token: str) -> FileContent:
        """The provider's archive of the checkpoint (a local trainer's cached tar; a remote
        provider's, streamed through), with its sha256."""
        job_uuid, checkpoint_id, _ = self._untoken(token, 3)
        await self._find(job_uuid, checkpoint_id, check_owner=False)
        archive: FileContent = await self.raw.checkpoint_archive(job_uuid, checkpoint_id)
        return archive

    async def export_download_url(self, export_id: str) -> ArchiveUrl:
        """A signed URL for what a merge or export made (the caller's, as `get_export` says)."""
        made = await self.jobs.get_export(export_id)
        if made.status != JobStatus.completed:
            raise ConflictError(
                f"export {export_id!r} is {made.status.value}: its download exists once it has "
                "completed",
                param="export_id",
            )
        expires = int(time.time()) + ARCHIVE_SECONDS
        token = self._token([export_id, expires])  # two fields: no checkpoint's token
        return ArchiveUrl(url=f"{BASE_URL.get()}{EXPORT_ROUTE}{token}", expires_at=expires)

    async def download_export(self, token: str) -> FileContent:
        export_id, _ = self._untoken(token, 2)
        made: FileContent = await self.raw.export_download(export_id)
        return made

    async def file_urls(self, job_uuid: str, checkpoint_id: str) -> tuple[dict[str, str], int]:
        """A URL for each file of a checkpoint, each carrying its own token."""
        folder = Path((await self._find(job_uuid, checkpoint_id)).path)
        expires = int(time.time()) + ARCHIVE_SECONDS
        urls = {}
        for name in await asyncio.to_thread(_files, folder):
            token = self._token([job_uuid, checkpoint_id, name, expires])
            urls[name] = f"{BASE_URL.get()}{FILE_ROUTE}{token}"
        return urls, expires

    async def download_checkpoint_file(self, token: str) -> FileContent:
        job_uuid, checkpoint_id, name, _ = self._untoken(token, 4)
        folder = Path((await self._find(job_uuid, checkpoint_id, check_owner=False)).path)
        if name not in await asyncio.to_thread(_files, folder):
            raise NotFoundError("no file at this URL", param="token")
        path = folder / name
        size = (await asyncio.to_thread(path.stat)).st_size
        return FileContent(chunks=_read(path), filename=path.name, size=size)

    # -- helpers -------------------------------------------------------------------------------

    async def _find(
        self, job_uuid: str, checkpoint_id: str, check_owner: bool = True
    ) -> Checkpoint:
        found: Checkpoint
        for found in (await self.raw.get_job_artifacts(job_uuid)).checkpoints:
            if found.checkpoint_id == checkpoint_id:
                if check_owner and not self.owners.visible("checkpoint", found.identifier):
                    break
                return found
        raise NotFoundError(
            f"job {job_uuid!r} has no checkpoint {checkpoint_id!r}", param="checkpoint_id"
        )

    async def _mine(self, job_uuid: str, checkpoint_id: str) -> Checkpoint:
        found = await self._find(job_uuid, checkpoint_id)
        if not self.owners.owns("checkpoint", found.identifier):
            raise PermissionDeniedError(
                f"checkpoint {found.identifier} is published, but only its job's owner may "
                "change it",
                param="checkpoint_id",
            )
        return found

    def _publish(self, found: Checkpoint, public: bool) -> None:
        self.owners.publish("checkpoint", found.identifier, public)
        if found.model_id is not None:  # the model made from it goes with it
            self.owners.publish("model", found.model_id, public)

    async def _remove(self, found: Checkpoint, reason: str) -> str | None:
        job_uuid = found.post_training_job_id
        status = (await self.raw.get_job_status(job_uuid)).status
        if status not in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled):
            raise ConflictError(
                f"job {job_uuid!r} is {status.value}: it resumes from its checkpoints; cancel "
                "it or let it finish first",
                param="checkpoint_id",
            )
        if found.model_id is not None:
            with contextlib.suppress(NotFoundError):
                await self.models.unregister_model(found.model_id)
        await self.raw.remove_checkpoint(job_uuid, found.checkpoint_id, reason)
        self._publish(found, False)
        self.db.execute(
            "DELETE FROM expiry WHERE job_uuid = ? AND checkpoint_id = ?",
            (job_uuid, found.checkpoint_id),
        )
        return found.model_id

    def _described(self, found: Checkpoint) -> Checkpoint:
        job_uuid, name = found.post_training_job_id, found.checkpoint_id
        row = self.db.one(
            "SELECT expires_at FROM expiry WHERE job_uuid = ? AND checkpoint_id = ?",
            (job_uuid, name),
        )
        return found.model_copy(
            update={
                "public": self.owners.is_public("checkpoint", found.identifier),
                "expires_at": row["expires_at"] if row else None,
            }
        )

    async def _sweep(self) -> None:
        """Remove checkpoints whose TTL has passed."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            due = self.db.all(
                "SELECT job_uuid, checkpoint_id FROM expiry WHERE expires_at <= ?",
                (int(time.time()),),
            )
            for row in due:
                try:
                    found = await self._find(row["job_uuid"], row["checkpoint_id"], False)
                    await self._remove(found, "its TTL expired")
                    log.info("removed expired checkpoint %s", found.identifier)
                except NotFoundError:  # gone already
                    self.db.execute(
                        "DELETE FROM expiry WHERE job_uuid = ? AND checkpoint_id = ?",
                        (row["job_uuid"], row["checkpoint_id"]),
                    )
                except Exception:
                    log.exception("could not remove expired checkpoint %s", dict(row))

    def _token(self, fields: list[Any]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def _untoken(self, token: str, count: int) -> list[Any]:
        """The fields a token signed, if it is ours, whole and unexpired (its last field)."""
        payload, _, signature = token.partition(".")
        gone = NotFoundError("nothing at this URL: it is wrong or has expired", param="token")
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            raise gone
        try:
            fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            raise gone from None
        if not isinstance(fields, list) or len(fields) != count or fields[-1] < time.time():
            raise gone
        return fields

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _secret(path: Path) -> bytes:
    """The key archive URLs are signed with, made once, readable by this user alone."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def _files(folder: Path) -> list[str]:
    """A checkpoint's files, by their paths in it (links are not followed)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    )


async def _read(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
