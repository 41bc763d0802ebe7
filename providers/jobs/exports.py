"""Merge and export jobs: an adapter merged into its base as a Hugging Face folder (registered as
a model), or a model written as a GGUF file. Durable as training jobs are, with less to do:

- a record per job in the provider's `exports.db` (its request, status, times, error, what it
  made), and a folder under `storage_dir/exports/<id>` (`export.json`, the worker's log and
  `result.json`); what it makes goes under `checkpoint_root/exports/<id>`, where
  the inference provider may read a merged folder;
- everything checked at creation (the model or checkpoint, that there is an adapter to merge,
  that the architecture can be written as GGUF, that the merged id is free), so a bad request
  is a 4xx and never a failed job;
- one worker process at a time (`python -m providers.jobs.export_worker FOLDER`, dying with the
  server), in a queue of its own beside the training jobs'; cancel sends SIGTERM, then SIGKILL
  after `cancel_grace_seconds`; a server that stops leaves its job `in_progress`, and the next
  start runs it again from the beginning (the worker writes beside its target and renames, so
  nothing half-written is ever taken for a result).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from llama_post import archives
from llama_post.apis.models import HuggingFaceSource, Models, RegisterModelRequest
from llama_post.apis.post_training import (
    ExportJob,
    ExportRequest,
    JobStatus,
    ListExportsResponse,
    LoraFinetuningConfig,
    MergeRequest,
)
from llama_post.apis.post_training.models import JOB_UUID_PATTERN
from llama_post.archives import read_chunks
from llama_post.errors import ConflictError, InvalidRequestError, LlamaPostError, NotFoundError
from llama_post.schema import FileContent
from llama_post.storage import Database, check_id
from providers.jobs.checkpoints import JobCheckpoints
from providers.jobs.config import LocalJobsConfig
from providers.jobs.launch import die_with_parent, send
from providers.jobs.store import TERMINAL, JobStore
from providers.utils.gguf_export import check_exportable

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    export_id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    error TEXT,
    model_id TEXT,
    target TEXT NOT NULL,
    size_bytes INTEGER,
    sha256 TEXT
);
"""
WORKER = "providers.jobs.export_worker"


class ExportJobs:
    """The merge and export jobs of one post-training provider."""

    def __init__(
        self,
        config: LocalJobsConfig,
        models: Models,
        provider_id: str,
        jobs: JobStore,
        checkpoints: JobCheckpoints,
    ) -> None:
        self.config = config
        self.models = models
        self.provider_id = provider_id
        self.jobs = jobs
        self.checkpoints = checkpoints
        self.folders = config.storage_dir / "exports"
        self.outputs = config.checkpoint_root / "exports"
        self.db = Database(config.storage_dir / "exports.db", SCHEMA)
        self.worker: tuple[str, asyncio.subprocess.Process] | None = None
        self.ended = asyncio.Event()  # set once the running job's end is recorded
        self.cancelling: set[str] = set()
        self.stopping = False
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # -- creating ------------------------------------------------------------------------------

    async def merge(self, request: MergeRequest) -> ExportJob:
        export_id = self._new_id(request.export_id, "merge")
        base, adapter, serves_with, label = await self._source(request)
        if adapter is None:
            field = "model" if request.model is not None else "checkpoint"
            raise InvalidRequestError(
                f"{field}: {label} is a full model, not an adapter: there is nothing to merge "
                "(POST /v1/post-training/export writes any model as GGUF)",
                param=field,
            )
        model_id = request.model_id or f"merged/{export_id}"
        try:
            await self.models.get_model(model_id)
        except NotFoundError:
            pass
        else:
            raise ConflictError(f"model_id: {model_id!r} is already registered", param="model_id")
        target = self.outputs / export_id
        spec = {"base_folder": str(base), "adapter_folder": str(adapter)}
        spec["serves_with"] = serves_with
        return self._insert(export_id, "merge", request, target, spec, model_id)

    async def export(self, request: ExportRequest) -> ExportJob:
        export_id = self._new_id(request.export_id, "export")
        base, adapter, _, label = await self._source(request)
        why = await asyncio.to_thread(check_exportable, base)
        if why is not None:
            field = "model" if request.model is not None else "checkpoint"
            raise InvalidRequestError(f"{field}: {label}: {why}", param=field)
        stem = label.replace("/", "-")
        target = self.outputs / export_id / f"{stem}-{request.outtype}.gguf"
        spec = {
            "base_folder": str(base),
            "adapter_folder": str(adapter) if adapter else None,
            "outtype": request.outtype,
            "name": label,
        }
        return self._insert(export_id, "gguf", request, target, spec, None)

    def _new_id(self, asked: str | None, prefix: str) -> str:
        export_id = asked or f"{prefix}-{secrets.token_hex(8)}"
        if self._row(export_id) is not None or self.jobs.row(export_id) is not None:
            raise ConflictError(f"export_id: {export_id!r} is taken", param="export_id")
        return export_id

    async def _source(
        self, request: MergeRequest | ExportRequest
    ) -> tuple[Path, Path | None, str, str]:
        """(base folder, adapter folder or None, the provider serving the base, a label)."""
        if (request.model is None) == (request.checkpoint is None):
            raise InvalidRequestError(
                "model: name a registered model, or a job's checkpoint as `checkpoint` "
                "(`<job_uuid>/<checkpoint_id>`), not both",
                param="model",
            )
        if request.model is not None:
            model = await self.models.get_model(request.model)
            if model.weights is None:
                raise InvalidRequestError(
                    f"model: {request.model!r} is served where this server cannot read its weights",
                    param="model",
                )
            adapter = model.weights.adapter_path
            served = await self.models.get_model(model.base_model) if model.base_model else model
            return (
                Path(model.weights.path),
                Path(adapter) if adapter else None,
                served.provider_id,
                request.model,
            )
        assert request.checkpoint is not None
        job_uuid, checkpoint_id = request.checkpoint.split("/")
        try:
            folder = self.checkpoints.folder(job_uuid, checkpoint_id)
        except NotFoundError as exc:
            raise NotFoundError(f"checkpoint: {exc.message}", param="checkpoint") from None
        spec = self.jobs.spec(job_uuid)
        served = await self.models.get_model(spec.request.model_id)
        serves_with = served.provider_id
        if served.base_model is not None:
            serves_with = (await self.models.get_model(served.base_model)).provider_id
        if isinstance(spec.request.tuning, LoraFinetuningConfig):
            return Path(spec.base_folder), folder, serves_with, request.checkpoint
        return folder, None, serves_with, request.checkpoint

    def _insert(
        self,
        export_id: str,
        kind: str,
        request: MergeRequest | ExportRequest,
        target: Path,
        spec: dict[str, Any],
        model_id: str | None,
    ) -> ExportJob:
        folder = self.folders / export_id
        folder.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "kind": kind, "target": str(target)}
        (folder / "export.json").write_text(json.dumps(spec, indent=2))
        self.db.execute(
            "INSERT INTO exports (export_id, kind, request, status, created_at, model_id, target) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                export_id,
                kind,
                request.model_copy(update={"export_id": export_id}).model_dump_json(),
                JobStatus.scheduled.value,
                int(time.time()),
                model_id,
                str(target),
            ),
        )
        self._wake.set()
        return self.get(export_id)

    # -- reading -------------------------------------------------------------------------------

    def _row(self, export_id: str) -> Any:
        return self.db.one("SELECT * FROM exports WHERE export_id = ?", (export_id,))

    def _existing(self, export_id: str) -> Any:
        check_id(export_id, _ID, "export")
        row = self._row(export_id)
        if row is None:
            raise NotFoundError(f"no export {export_id!r}", param="export_id")
        return row

    def holds(self, export_id: str) -> bool:
        return self._row(export_id) is not None

    def folders_of(self, export_id: str) -> list[Path]:
        """Its folder and its output's (`Locations` keeps other owners out of both)."""
        return [self.folders / export_id, self.outputs / export_id]

    def get(self, export_id: str) -> ExportJob:
        row = self._existing(export_id)
        request = json.loads(row["request"])
        done = row["status"] == JobStatus.completed.value
        target = Path(row["target"])
        return ExportJob(
            export_id=export_id,
            kind=row["kind"],
            status=JobStatus(row["status"]),
            provider_id=self.provider_id,
            model=request.get("model"),
            checkpoint=request.get("checkpoint"),
            outtype=request.get("outtype"),
            model_id=row["model_id"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            error=row["error"],
            filename=(target.name if row["kind"] == "gguf" else f"{export_id}.tar.gz")
            if done
            else None,
            size_bytes=row["size_bytes"],
            sha256=row["sha256"],
            path=str(target) if done else None,
        )

    def list(self) -> ListExportsResponse:
        rows = self.db.all("SELECT export_id FROM exports ORDER BY seq")
        return ListExportsResponse(data=[self.get(r["export_id"]) for r in rows])

    async def download(self, export_id: str) -> FileContent:
        row = self._existing(export_id)
        if row["status"] != JobStatus.completed.value:
            raise ConflictError(
                f"export {export_id!r} is {row['status']}: download it once it has completed",
                param="export_id",
            )
        target = Path(row["target"])
        if row["kind"] == "merge":
            path, sha256, size = await asyncio.to_thread(archives.packed, target, export_id)
            return FileContent(
                chunks=read_chunks(path),
                media_type=archives.MEDIA_TYPE,
                filename=f"{export_id}.tar.gz",
                size=size,
                sha256=sha256,
            )
        return FileContent(
            chunks=read_chunks(target),
            filename=target.name,
            size=row["size_bytes"],
            sha256=row["sha256"],
        )

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Queue again what was running when the server stopped, then run the queue."""
        for row in self.db.all(
            "SELECT export_id FROM exports WHERE status = ?", (JobStatus.in_progress.value,)
        ):
            self._note(row["export_id"], "the server started again; the job runs again")
            self._set(row["export_id"], JobStatus.scheduled)
        self._runner = asyncio.create_task(self._run())
        self._wake.set()

    async def shutdown(self) -> None:
        self.stopping = True
        if self._runner is not None:
            self._runner.cancel()
        if self.worker is not None:
            _, proc = self.worker
            send(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.config.cancel_grace_seconds)
            except TimeoutError:
                send(proc, signal.SIGKILL)
        self.db.close()

    async def cancel(self, export_id: str) -> ExportJob:
        status = JobStatus(self._existing(export_id)["status"])
        if status in TERMINAL:
            raise ConflictError(
                f"export {export_id!r} is already {status.value}", param="export_id"
            )
        if self.worker is None or self.worker[0] != export_id:
            self._set(export_id, JobStatus.cancelled)
            return self.get(export_id)
        proc, ended = self.worker[1], self.ended
        self.cancelling.add(export_id)
        send(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(ended.wait(), self.config.cancel_grace_seconds)
        except TimeoutError:
            send(proc, signal.SIGKILL)
            await ended.wait()  # the runner records the end
        return self.get(export_id)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self.stopping:
                row = self.db.one(
                    "SELECT export_id FROM exports WHERE status = ? ORDER BY seq LIMIT 1",
                    (JobStatus.scheduled.value,),
                )
                if row is None:
                    break
                try:
                    await self._one(row["export_id"])
                except Exception as exc:  # a failure to record, not the worker's
                    log.exception("export %s could not be run", row["export_id"])
                    self._set(row["export_id"], JobStatus.failed, f"{type(exc).__name__}: {exc}")

    async def _one(self, export_id: str) -> None:
        folder = self.folders / export_id
        started = self.db.execute(
            "UPDATE exports SET status = ?, started_at = ? WHERE export_id = ? AND status = ?",
            (JobStatus.in_progress.value, int(time.time()), export_id, JobStatus.scheduled.value),
        )
        if not started:  # cancelled meanwhile
            return
        env = dict(os.environ)
        if self.config.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.config.torch_threads)
        with (folder / "export.log").open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", WORKER, str(folder)),
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
                env=env,
            )
        self.worker, self.ended = (export_id, proc), asyncio.Event()
        try:
            await self._ended(export_id, folder, await proc.wait())
        finally:
            self.worker = None
            self.ended.set()

    async def _ended(self, export_id: str, folder: Path, code: int) -> None:
        if export_id in self.cancelling:
            self.cancelling.discard(export_id)
            self._set(export_id, JobStatus.cancelled)
        elif self.stopping:
            return  # left in progress: it runs again at the next start
        elif code != 0:
            self._set(export_id, JobStatus.failed, _last_error(folder / "export.log", code))
        else:
            await self._finish(export_id, folder)

    async def _finish(self, export_id: str, folder: Path) -> None:
        result = json.loads((folder / "result.json").read_text())
        row = self._existing(export_id)
        self.db.execute(
            "UPDATE exports SET size_bytes = ?, sha256 = ? WHERE export_id = ?",
            (result["size_bytes"], result["sha256"], export_id),
        )
        if row["kind"] == "merge":
            spec = json.loads((folder / "export.json").read_text())
            request = json.loads(row["request"])
            registration = RegisterModelRequest(
                model_id=row["model_id"],
                source=HuggingFaceSource(type="huggingface", path=row["target"]),
                provider_id=spec["serves_with"],
                metadata={
                    "export_id": export_id,
                    "merged_from": request.get("model") or request.get("checkpoint"),
                },
            )
            try:
                await self.models.register_model(registration)
            except LlamaPostError as exc:
                why = f"merged into {row['target']}, but it could not be served: {exc.message}"
                self._set(export_id, JobStatus.failed, why)
                return
        self._set(export_id, JobStatus.completed)

    def _set(self, export_id: str, status: JobStatus, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE exports SET status = ?, completed_at = ?, error = COALESCE(?, error) "
            "WHERE export_id = ?",
            (status.value, int(time.time()) if status in TERMINAL else None, error, export_id),
        )

    def _note(self, export_id: str, line: str) -> None:
        with (self.folders / export_id / "export.log").open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} SUPERVISOR {line}\n")


_ID = re.compile(JOB_UUID_PATTERN)


def _last_error(log_path: Path, code: int) -> str:
    """The worker's last line of output (a traceback's exception), with its exit code."""
    try:
        lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    last = lines[-1].strip() if lines else "no output"
    return f"the worker exited with {code}: {last[-500:]}"
