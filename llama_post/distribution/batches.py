"""OpenAI's Batch API, served by the stack over whatever serves Files and Inference.

A batch is a row in the stack's SQLite (`batches.db`) and a folder under `storage_dir/batches`
(`BatchFolder`). Creating one snapshots its input file into the folder (refusing, 413, a file
over `batches.max_input_bytes` or `max_input_lines`) and starts its runner: a task that checks
every line, sends up to `max_concurrent_lines` at once through the Inference API (so the engine
decodes them as one batch), and appends each result to the folder as it arrives. A line that is
not a valid request, or that inference refuses, is a result too, in the error file with its line
number. When every line has one, the output and error files are uploaded through the Files API
(purpose `batch_output`) and the batch is `completed`. The results on disk are the record of
what ran, so after a restart a batch's runner starts again and runs only the lines without one.
Cancelling stops the runner (lines in flight are dropped) and uploads what ran; a batch not done
`window_seconds` after its creation expires the same way, its lines not run in the error file.

The runner calls Files and Inference as the batch's creator (`PRINCIPAL`), so it may use only
what its creator may, and the files it uploads are its creator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from llama_post.apis.batches import (
    ENDPOINTS,
    FINAL,
    WINDOW,
    Batch,
    BatchError,
    BatchErrors,
    BatchRequestCounts,
    CreateBatchRequest,
    ListBatchesRequest,
    ListBatchesResponse,
)
from llama_post.apis.files import FilePurpose, UploadFileRequest
from llama_post.auth import PRINCIPAL, Principal
from llama_post.distribution.batch_folder import (
    ROUTES,
    BatchFolder,
    Line,
    failure,
    snapshot_limits,
    success,
)
from llama_post.distribution.config import BatchesConfig
from llama_post.distribution.owners import Owners
from llama_post.errors import ConflictError, InvalidRequestError, LlamaPostError, NotFoundError
from llama_post.schema import UploadedFile
from llama_post.storage import Database, check_id

log = logging.getLogger(__name__)
BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT,
    admin INTEGER NOT NULL DEFAULT 0,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    errors TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER
);
"""
TIMES = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


class BatchService:
    """The Batches API. `files` and `inference` are the stack's guarded implementations."""

    def __init__(
        self,
        files: Any,
        inference: Any,
        storage_dir: Path,
        config: BatchesConfig,
        owners: Owners | None = None,
    ) -> None:
        self.files = files
        self.inference = inference
        self.config = config
        self.owners = owners
        self.root = storage_dir / "batches"
        self.db = Database(storage_dir / "batches.db", SCHEMA)
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._work: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Resume every batch a previous server left unfinished."""
        for row in self.db.all(
            "SELECT id FROM batches WHERE status NOT IN (?, ?, ?, ?)", sorted(FINAL)
        ):
            self._run(row["id"])

    async def shutdown(self) -> None:
        """Stop the runners, leaving their batches to resume at the next start."""
        runners = list(self._runners.values())
        for task in runners:
            task.cancel()
        for task in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.db.close()

    # -- the API -------------------------------------------------------------------------------

    async def create_batch(self, request: CreateBatchRequest) -> Batch:
        await self._check(request)
        file_id = request.input_file_id
        batch_id = f"batch_{secrets.token_hex(12)}"
        folder = BatchFolder(self.root / batch_id)
        try:
            total = await self._snapshot(file_id, folder)
        except BaseException:
            shutil.rmtree(folder.path, ignore_errors=True)
            raise
        now = int(time.time())
        principal = PRINCIPAL.get()
        self.db.execute(
            "INSERT INTO batches (id, owner, admin, key_id, endpoint, input_file_id, "
            "completion_window, status, metadata, total, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'validating', ?, ?, ?, ?)",
            (
                batch_id,
                principal.owner if principal else None,
                int(principal.admin) if principal else 0,
                principal.key_id if principal else None,
                request.endpoint,
                file_id,
                request.completion_window,
                json.dumps(request.metadata) if request.metadata is not None else None,
                total,
                now,
                now + self.config.window_seconds,
            ),
        )
        self._run(batch_id)
        return self._batch(batch_id)

    async def _check(self, request: CreateBatchRequest) -> None:
        """Refuse what cannot make a batch: the endpoint, window and input file, by field."""
        if request.endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint: must be one of {', '.join(ENDPOINTS)}, not {request.endpoint!r}",
                param="endpoint",
            )
        if request.completion_window != WINDOW:
            raise InvalidRequestError(
                f"completion_window: only {WINDOW!r} is supported, not "
                f"{request.completion_window!r}",
                param="completion_window",
            )
        file_id = request.input_file_id
        try:
            meta = await self.files.retrieve_file(file_id)
        except NotFoundError:
            raise NotFoundError(
                f"input_file_id: no file {file_id!r}", param="input_file_id"
            ) from None
        if meta.purpose != FilePurpose.batch:
            raise InvalidRequestError(
                f"input_file_id: {file_id} was uploaded with purpose {meta.purpose.value!r}; "
                "a batch's input needs purpose 'batch'",
                param="input_file_id",
            )
        snapshot_limits(meta.bytes, 0, self.config.max_input_bytes, self.config.max_input_lines)

    async def retrieve_batch(self, batch_id: str) -> Batch:
        return self._batch(batch_id)

    async def list_batches(self, request: ListBatchesRequest) -> ListBatchesResponse:
        after = 1 << 62
        if request.after is not None:
            row = self.db.one("SELECT seq FROM batches WHERE id = ?", (request.after,))
            if row is None or not self._visible(request.after):
                raise NotFoundError(f"after: no batch {request.after!r}", param="after")
            after = row["seq"]
        page: list[Batch] = []
        has_more = False
        for row in self.db.all("SELECT * FROM batches WHERE seq < ? ORDER BY seq DESC", (after,)):
            if not self._visible(row["id"]):
                continue
            if len(page) == request.limit:
                has_more = True
                break
            page.append(_to_batch(row))
        return ListBatchesResponse(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=has_more,
        )

    async def cancel_batch(self, batch_id: str) -> Batch:
        status = self._batch(batch_id).status
        if status in FINAL or status == "finalizing":
            raise ConflictError(f"batch {batch_id} is {status}; only a running batch is cancelled")
        if status != "cancelling":
            self._set(batch_id, "cancelling")
            work = self._work.get(batch_id)
            if work is not None:
                work.cancel()
        return self._batch(batch_id)

    # -- the runner ----------------------------------------------------------------------------

    def _run(self, batch_id: str) -> None:
        task = asyncio.create_task(self._drive(batch_id), name=f"batch {batch_id}")
        self._runners[batch_id] = task
        task.add_done_callback(lambda _: self._runners.pop(batch_id, None))

    async def _drive(self, batch_id: str) -> None:
        row = self._row(batch_id)
        owner = row["owner"]  # run as its creator, as the request that made it did
        PRINCIPAL.set(Principal(owner, bool(row["admin"]), row["key_id"] or "") if owner else None)
        try:
            outcome = "cancelled"
            if row["status"] != "cancelling":
                outcome = await self._lines(batch_id, row["endpoint"], row["expires_at"])
            if self._row(batch_id)["status"] == "cancelling":
                outcome = "cancelled"
            await self._finish(batch_id, outcome)
        except Exception as exc:
            log.exception("batch %s failed", batch_id)
            error = BatchError(code="server_error", message=f"{type(exc).__name__}: {exc}")
            self.db.execute(
                "UPDATE batches SET status = 'failed', failed_at = ?, errors = ? WHERE id = ?",
                (int(time.time()), BatchErrors(data=[error]).model_dump_json(), batch_id),
            )

    async def _lines(self, batch_id: str, endpoint: str, expires_at: int) -> str:
        """Run every line without a result; return how the batch ends."""
        folder = BatchFolder(self.root / batch_id)
        lines = await asyncio.to_thread(lambda: list(folder.lines(endpoint)))
        finished, completed, failed = await asyncio.to_thread(folder.done, lines)
        counts = {"completed": completed, "failed": failed}
        self._count(batch_id, counts, total=len(lines))
        status = self._row(batch_id)["status"]
        if status == "cancelling":  # cancelled while its lines were read
            return "cancelled"
        if status == "validating":
            self._set(batch_id, "in_progress")
        call = getattr(self.inference, ROUTES[endpoint].name)
        todo = iter([line for line in lines if line.number not in finished])
        expired = asyncio.Event()

        async def worker() -> None:
            for line in todo:  # one iterator shared by the workers: each takes the next line
                if time.time() >= expires_at:
                    expired.set()
                    record = failure(line, "batch_expired", "the batch expired before it ran")
                    await self._record(folder, batch_id, counts, record, ok=False)
                    continue
                record, ok = await self._one(call, line)
                await self._record(folder, batch_id, counts, record, ok)

        async def run_all() -> None:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.config.max_concurrent_lines):
                    group.create_task(worker())

        # `cancel_batch` cancels this task only; the runner goes on to upload what ran
        work = self._work[batch_id] = asyncio.create_task(run_all())
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the server is stopping: the batch resumes at its next start
            return "cancelled"
        finally:
            self._work.pop(batch_id, None)
        return "expired" if expired.is_set() else "completed"

    async def _one(self, call: Any, line: Line) -> tuple[dict[str, Any], bool]:
        if line.request is None:
            return failure(line, "invalid_request", line.problem or "invalid request"), False
        try:
            result = await call(line.request)
        except LlamaPostError as exc:
            return failure(line, exc.type, f"line {line.number}: {exc.message}", exc), False
        except Exception as exc:
            log.exception("batch line %d failed", line.number)
            return failure(line, "server_error", f"line {line.number}: {exc}"), False
        return success(line, result.model_dump(mode="json")), True

    async def _record(
        self,
        folder: BatchFolder,
        batch_id: str,
        counts: dict[str, int],
        record: dict[str, Any],
        ok: bool,
    ) -> None:
        await asyncio.to_thread(folder.append, record, ok)
        counts["completed" if ok else "failed"] += 1
        self._count(batch_id, counts)

    async def _finish(self, batch_id: str, outcome: str) -> None:
        """Upload what ran and end the batch as `outcome`."""
        if outcome == "completed":
            self._set(batch_id, "finalizing")
        folder = BatchFolder(self.root / batch_id)
        output = await self._upload(folder, folder.output, f"{batch_id}_output.jsonl")
        errors = await self._upload(folder, folder.errors, f"{batch_id}_error.jsonl")
        self.db.execute(
            f"UPDATE batches SET status = ?, {outcome}_at = ?, output_file_id = ?, "
            "error_file_id = ? WHERE id = ?",
            (outcome, int(time.time()), output, errors, batch_id),
        )

    async def _upload(self, folder: BatchFolder, path: Path, filename: str) -> str | None:
        if await asyncio.to_thread(folder.size, path) == 0:
            return None
        with path.open("rb") as content:
            request = UploadFileRequest(
                file=UploadedFile(filename=filename, file=content),
                purpose=FilePurpose.batch_output,
            )
            made = await self.files.upload_file(request)
        return str(made.id)

    async def _snapshot(self, file_id: str, folder: BatchFolder) -> int:
        """Copy the input file into the batch's folder; return its count of non-blank lines."""
        folder.path.mkdir(parents=True, exist_ok=True)
        content = await self.files.retrieve_file_content(file_id)
        size = 0
        part = folder.input.with_suffix(".part")
        with part.open("wb") as out:
            async for chunk in content.chunks:
                size += len(chunk)
                snapshot_limits(size, 0, self.config.max_input_bytes, self.config.max_input_lines)
                out.write(chunk)
        lines = await asyncio.to_thread(_count_lines, part)
        snapshot_limits(size, lines, self.config.max_input_bytes, self.config.max_input_lines)
        if lines == 0:
            raise InvalidRequestError(
                f"input_file_id: {file_id} holds no request, one JSON object a line",
                param="input_file_id",
            )
        part.replace(folder.input)
        return lines

    # -- the record ----------------------------------------------------------------------------

    def _row(self, batch_id: str) -> sqlite3.Row:
        check_id(batch_id, BATCH_ID, "batch")
        row = self.db.one("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if row is None:
            raise NotFoundError(f"no batch {batch_id!r}", param="batch_id")
        return row

    def _batch(self, batch_id: str) -> Batch:
        return _to_batch(self._row(batch_id))

    def _set(self, batch_id: str, status: str) -> None:
        self.db.execute(
            f"UPDATE batches SET status = ?, {status}_at = ? WHERE id = ?",
            (status, int(time.time()), batch_id),
        )

    def _count(self, batch_id: str, counts: dict[str, int], total: int | None = None) -> None:
        self.db.execute(
            "UPDATE batches SET completed = ?, failed = ?, total = COALESCE(?, total) WHERE id = ?",
            (counts["completed"], counts["failed"], total, batch_id),
        )

    def _visible(self, batch_id: str) -> bool:
        return self.owners is None or self.owners.visible("batch", batch_id)


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for raw in f if raw.strip())


def _to_batch(row: sqlite3.Row) -> Batch:
    r = dict(row)
    return Batch(
        id=r["id"],
        endpoint=r["endpoint"],
        errors=BatchErrors.model_validate_json(r["errors"]) if r["errors"] else None,
        input_file_id=r["input_file_id"],
        completion_window=r["completion_window"],
        status=r["status"],
        output_file_id=r["output_file_id"],
        error_file_id=r["error_file_id"],
        created_at=r["created_at"],
        expires_at=r["expires_at"],
        request_counts=BatchRequestCounts(
            total=r["total"], completed=r["completed"], failed=r["failed"]
        ),
        metadata=json.loads(r["metadata"]) if r["metadata"] else None,
        **{f"{name}_at": r[f"{name}_at"] for name in TIMES},
    )
