"""Post-training on a remote llama-post, served here.

Every call is the remote's route (`RemoteApi`). Three things are this server's own:

- the jobs it started there are recorded (`remote_jobs.db`: the job, its last status), so a
  restarted server still knows them, and a job whose remote cannot be reached is shown as
  `unknown` with the reason (`unreachable`), from its last known status, never as failed;
- when a job completes there, its final checkpoint is fetched as an archive (the remote's signed
  archive URL, streamed into this server's Models API as an `archive` source) and served here
  as `ft/<job>`, by this server's inference provider; the job reads as completed here once that
  is done (a poller does it for jobs nobody is watching);
- deleting a checkpoint is the remote's `DELETE` of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_post.apis.models import ArchiveSource, Models, RegisterModelRequest
from llama_post.apis.post_training import (
    ListPostTrainingJobsResponse,
    PostTrainingJob,
    PostTrainingJobStatusResponse,
    PreferenceOptimizeRequest,
    ReinforceRequest,
    SupervisedFineTuneRequest,
)
from llama_post.apis.post_training.access import InferenceAccess
from llama_post.apis.post_training.jobs import JobStatus
from llama_post.apis.post_training.models import JobRequest
from llama_post.auth import PRINCIPAL
from llama_post.errors import InvalidRequestError, LlamaPostError, NotFoundError, UpstreamError
from llama_post.graders import GraderSettings
from llama_post.remote import ROUTES
from llama_post.storage import Database
from providers.remote.llama_post.client import RemoteApi
from providers.remote.llama_post.config import RemotePostTrainingConfig

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_uuid TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,            -- the last status read from the remote (JSON)
    settled INTEGER NOT NULL DEFAULT 0,  -- ended; if completed, its model published here
    note TEXT,                       -- why its model is not served here, if it is not
    tries INTEGER NOT NULL DEFAULT 0     -- failed publications so far
);
"""
PUBLISH_TRIES = 5


class RemotePostTraining:
    def __init__(self, remote: RemoteApi, config: RemotePostTrainingConfig, models: Models) -> None:
        self.remote = remote
        self.config = config
        self.models = models
        self.db = Database(config.storage_dir / "remote_jobs.db", SCHEMA)
        self.publishing: dict[str, asyncio.Lock] = {}
        self._poller: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["remote"], name)

    def use_grader_settings(self, settings: GraderSettings) -> None:
        """Nothing to take: a job's graders run on the trainer, under its own run.yaml's
        `graders:` settings (the python grader is the trainer's to allow)."""

    def use_locations(self, usable: Callable[[Path], bool]) -> None:
        """Nothing to resolve here: a job's folders are the trainer's (`_named_folders`)."""

    def use_inference_access(self, access: InferenceAccess) -> None:
        """Nothing to take: a job's workers run on the trainer, and call its inference."""

    def job_folders(self, job_uuid: str) -> list[Path]:
        return []  # on the trainer

    async def started(self) -> None:
        """The stack is up (its models loaded): publishing can begin."""
        self._poller = asyncio.create_task(self._poll())

    async def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.remote.shutdown()
        self.db.close()

    async def health(self) -> Any:
        return await self.remote.health()

    # -- jobs ----------------------------------------------------------------------------------

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        _named_folders(request)
        job: PostTrainingJob = await self.remote.supervised_fine_tune(request)
        await self._record(job.job_uuid)
        return job

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        _named_folders(request)
        job: PostTrainingJob = await self.remote.preference_optimize(request)
        await self._record(job.job_uuid)
        return job

    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob:
        _named_folders(request)
        job: PostTrainingJob = await self.remote.reinforce(request)
        await self._record(job.job_uuid)
        return job

    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        try:
            listed: ListPostTrainingJobsResponse = await self.remote.list_jobs()
        except UpstreamError:  # the jobs started from here, as last seen
            rows = self.db.all("SELECT job_uuid FROM jobs ORDER BY created_at")
            return ListPostTrainingJobsResponse(
                data=[PostTrainingJob(job_uuid=r["job_uuid"]) for r in rows]
            )
        return listed

    async def get_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        row = self.db.one("SELECT status, settled, note FROM jobs WHERE job_uuid = ?", (job_uuid,))
        try:
            status: PostTrainingJobStatusResponse = await self.remote.get_job_status(job_uuid)
        except UpstreamError as exc:
            if row is None:
                raise
            last = PostTrainingJobStatusResponse.model_validate_json(row["status"])
            return last.model_copy(update={"status": JobStatus.unknown, "unreachable": exc.message})
        if row is None:  # started on the remote by someone else: not ours to publish
            return status
        self.db.execute(
            "UPDATE jobs SET status = ? WHERE job_uuid = ?", (status.model_dump_json(), job_uuid)
        )
        if status.status in (JobStatus.failed, JobStatus.cancelled):
            self.db.execute("UPDATE jobs SET settled = 1 WHERE job_uuid = ?", (job_uuid,))
        if status.status != JobStatus.completed:
            return status
        note = row["note"] if row["settled"] else await self._settle(status)
        return status.model_copy(update={"error": note}) if note else status

    async def remove_checkpoint(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        route = ROUTES["post_training", "delete_checkpoint"]
        await self.remote.client.call(route, job_uuid=job_uuid, checkpoint_id=checkpoint_id)

    # -- publishing ----------------------------------------------------------------------------

    async def _settle(self, status: PostTrainingJobStatusResponse) -> str | None:
        """Publish a completed job's model here, once (a poller and a caller may race). A
        failure may pass (a server starting has not loaded the base yet; the remote's archive
        URL is unreachable): it is tried again at each read, PUBLISH_TRIES times, then it is
        final and the job's error says why."""
        job_uuid = status.job_uuid
        async with self.publishing.setdefault(job_uuid, asyncio.Lock()):
            row = self.db.one(
                "SELECT settled, note, tries FROM jobs WHERE job_uuid = ?", (job_uuid,)
            )
            if row is None or row["settled"]:
                return None if row is None else row["note"]
            try:
                await self._publish(status)
            except LlamaPostError as exc:
                tries = row["tries"] + 1
                note = f"trained on the remote, not served here: {exc.message}"
                final = tries >= PUBLISH_TRIES
                if final:
                    note += "; register its archive with POST /v1/models"
                log.warning("job %s: %s (try %d of %d)", job_uuid, note, tries, PUBLISH_TRIES)
                self.db.execute(
                    "UPDATE jobs SET settled = ?, note = ?, tries = ? WHERE job_uuid = ?",
                    (int(final), note, tries, job_uuid),
                )
                return note
            self.db.execute(
                "UPDATE jobs SET settled = 1, note = NULL WHERE job_uuid = ?", (job_uuid,)
            )
            return None

    async def _publish(self, status: PostTrainingJobStatusResponse) -> None:
        """Register the final checkpoint here as the job's model, from the remote's archive."""
        if not status.checkpoints or status.fine_tuned_model is None:
            return  # the remote did not serve it either (its own error says why)
        final, model_id = status.checkpoints[-1], status.fine_tuned_model
        with contextlib.suppress(NotFoundError):
            await self.models.get_model(model_id)
            return  # published by an earlier run of this server
        base = None
        if status.algorithm == "LoRA":
            served = await self.models.get_model(status.model)
            base = served.base_model or served.id
        archive = await self.remote.checkpoint_archive_url(
            job_uuid=status.job_uuid, checkpoint_id=final.checkpoint_id
        )
        await self.models.register_model(
            RegisterModelRequest(
                model_id=model_id,
                source=ArchiveSource(type="archive", url=archive.url, base_model=base),
                metadata={"job_uuid": status.job_uuid, "checkpoint": final.checkpoint_id},
            )
        )
        log.info("job %s: %s is served here", status.job_uuid, model_id)

    async def _record(self, job_uuid: str) -> None:
        status: PostTrainingJobStatusResponse = await self.remote.get_job_status(job_uuid)
        self.db.execute(
            "INSERT OR IGNORE INTO jobs (job_uuid, created_at, status) VALUES (?, ?, ?)",
            (job_uuid, int(time.time()), status.model_dump_json()),
        )

    async def _poll(self) -> None:
        """Read every unfinished job now and then, so each finished one is published here
        whether or not anyone asks, after a restart too."""
        while True:
            rows = self.db.all("SELECT job_uuid FROM jobs WHERE settled = 0")
            for row in rows:
                try:
                    await self.get_job_status(row["job_uuid"])
                except LlamaPostError as exc:
                    log.debug("job %s not read: %s", row["job_uuid"], exc.message)
                except Exception:
                    log.exception("job %s not read", row["job_uuid"])
            await asyncio.sleep(self.config.poll_seconds)


def _named_folders(request: JobRequest) -> None:
    """A folder a request names (`checkpoint_dir`, a tracker's `log_dir`) lies on the trainer,
    which sees every owner of this server as one key: whose job's folder it is cannot be told
    from here, so only an admin key (or an in-process call) may name one."""
    principal = PRINCIPAL.get()
    if principal is None or principal.admin:
        return
    named = [("checkpoint_dir", request.checkpoint_dir)]
    trackers = request.logger_config.trackers if request.logger_config else []
    for i, tracker in enumerate(trackers):
        named.append((f"logger_config.trackers[{i}].log_dir", getattr(tracker, "log_dir", None)))
    for field, folder in named:
        if folder is not None:
            raise InvalidRequestError(
                f"{field}: this server trains on a remote llama-post, where the folder cannot be "
                "checked as yours; leave it unset (the job's own folder is used), or use an "
                "admin key",
                param=field,
            )
