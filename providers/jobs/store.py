"""The job store: each job's record in the provider's SQLite file (`jobs.db`: its request,
status, times, resources, error, published model and attempts) and its folder under
`storage_dir/jobs/<job>` (`JobFolder`). Every other part reads and writes jobs through it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from llama_post.apis.post_training import JobStatus, TrainingRequest
from llama_post.apis.post_training.models import JOB_UUID_PATTERN
from llama_post.errors import NotFoundError
from llama_post.storage import Database, check_id
from providers.jobs.folder import JobFolder, JobSpec, checkpoints

REQUEST: TypeAdapter[TrainingRequest] = TypeAdapter(TrainingRequest)
JOB_ID = re.compile(JOB_UUID_PATTERN)
TERMINAL = {JobStatus.completed, JobStatus.failed, JobStatus.cancelled}
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid TEXT UNIQUE NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    scheduled_at INTEGER,
    started_at INTEGER,
    completed_at INTEGER,
    error TEXT,
    fine_tuned_model TEXT,
    resources TEXT,
    attempts TEXT NOT NULL DEFAULT '[]'
);
"""


class JobStore:
    """The jobs' records and folders."""

    def __init__(self, storage_dir: Path) -> None:
        self.jobs_dir = storage_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(storage_dir / "jobs.db", SCHEMA)
        columns = {r["name"] for r in self.db.all("PRAGMA table_info(jobs)")}
        if "attempts" not in columns:  # a store from before attempts were recorded
            self.db.execute("ALTER TABLE jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]'")

    def close(self) -> None:
        self.db.close()

    # -- a job's folder ------------------------------------------------------------------------

    def folder(self, job_uuid: str) -> JobFolder:
        return JobFolder(self.jobs_dir / job_uuid)

    def spec(self, job_uuid: str) -> JobSpec:
        return self.folder(job_uuid).read_spec()

    def checkpoint_dir(self, job_uuid: str) -> Path:
        return Path(self.spec(job_uuid).checkpoint_dir)

    def note(self, job_uuid: str, line: str) -> None:
        """A line of the supervisor's in the job's log, so its events tell the story."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.folder(job_uuid).log.open("a") as f:
            f.write(f"{stamp} SUPERVISOR {line}\n")

    # -- its record ----------------------------------------------------------------------------

    def row(self, job_uuid: str) -> Any:
        return self.db.one("SELECT * FROM jobs WHERE job_uuid = ?", (job_uuid,))

    def existing(self, job_uuid: str) -> Any:
        """The job's row; a 404 for an id that is malformed or names no job."""
        check_id(job_uuid, JOB_ID, "job")
        row = self.row(job_uuid)
        if row is None:
            raise NotFoundError(f"no job {job_uuid!r}", param="job_uuid")
        return row

    def request(self, job_uuid: str) -> TrainingRequest:
        return REQUEST.validate_json(self.existing(job_uuid)["request"])

    def status(self, job_uuid: str) -> JobStatus:
        return JobStatus(self.existing(job_uuid)["status"])

    def insert(self, request: TrainingRequest) -> None:
        """Record a new job (its request carries its id) as scheduled."""
        self.db.execute(
            "INSERT INTO jobs (job_uuid, request, status, scheduled_at) VALUES (?, ?, ?, ?)",
            (
                request.job_uuid,
                request.model_dump_json(),
                JobStatus.scheduled.value,
                int(time.time()),
            ),
        )

    def ids(self, status: JobStatus | None = None) -> list[str]:
        """Every job's id in creation order; only those of `status` where it is given."""
        if status is None:
            rows = self.db.all("SELECT job_uuid FROM jobs ORDER BY seq")
        else:
            rows = self.db.all(
                "SELECT job_uuid FROM jobs WHERE status = ? ORDER BY seq", (status.value,)
            )
        return [r["job_uuid"] for r in rows]

    def next_scheduled(self) -> str | None:
        row = self.db.one(
            "SELECT job_uuid FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
            (JobStatus.scheduled.value,),
        )
        return None if row is None else str(row["job_uuid"])

    def reschedule(self, job_uuid: str, only_in_progress: bool = False) -> None:
        """Queue the job again (only one still in progress, with `only_in_progress`)."""
        if only_in_progress:
            self.db.execute(
                "UPDATE jobs SET status = ? WHERE job_uuid = ? AND status = ?",
                (JobStatus.scheduled.value, job_uuid, JobStatus.in_progress.value),
            )
        else:
            self.db.execute(
                "UPDATE jobs SET status = ? WHERE job_uuid = ?",
                (JobStatus.scheduled.value, job_uuid),
            )

    def started(self, job_uuid: str, resources: dict[str, Any]) -> bool:
        """Mark a scheduled job in progress on these resources; False where it was no longer
        scheduled (cancelled while its worker was being started)."""
        return bool(
            self.db.execute(
                "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), resources = ? "
                "WHERE job_uuid = ? AND status = ?",
                (
                    JobStatus.in_progress.value,
                    int(time.time()),
                    json.dumps(resources),
                    job_uuid,
                    JobStatus.scheduled.value,
                ),
            )
        )

    def set(
        self,
        job_uuid: str,
        status: JobStatus,
        error: str | None = None,
        fine_tuned_model: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE jobs SET status = ?, completed_at = ?, error = COALESCE(?, error), "
            "fine_tuned_model = COALESCE(?, fine_tuned_model) WHERE job_uuid = ?",
            (
                status.value,
                int(time.time()) if status in TERMINAL else None,
                error,
                fine_tuned_model,
                job_uuid,
            ),
        )

    def count_by_state(self) -> dict[str, int]:
        rows = self.db.all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return dict.fromkeys((s.value for s in JobStatus), 0) | {
            r["status"]: int(r["n"]) for r in rows
        }

    # -- its attempts --------------------------------------------------------------------------

    def attempts(self, job_uuid: str) -> list[dict[str, Any]]:
        row = self.db.one("SELECT attempts FROM jobs WHERE job_uuid = ?", (job_uuid,))
        found: list[dict[str, Any]] = json.loads(row["attempts"]) if row else []
        return found

    def begin_attempt(self, job_uuid: str, ray_submission_id: str | None = None) -> None:
        attempts = self.attempts(job_uuid)
        kept = checkpoints(self.checkpoint_dir(job_uuid))
        attempt = {
            "attempt": len(attempts) + 1,
            "started_at": int(time.time()),
            "resumed_from": kept[-1][1].name if kept else None,
        }
        if ray_submission_id is not None:  # a restarted server re-attaches by it
            attempt["submission_id"] = ray_submission_id
        if attempts:
            self.note(
                job_uuid,
                f"attempt {attempt['attempt']} starts"
                + (f", resuming from {attempt['resumed_from']}" if kept else ", from the start"),
            )
        self.db.execute(
            "UPDATE jobs SET attempts = ? WHERE job_uuid = ?",
            (json.dumps([*attempts, attempt]), job_uuid),
        )

    def end_attempt(self, job_uuid: str, reason: str | None, machine: bool = False) -> None:
        attempts = self.attempts(job_uuid)
        if not attempts or attempts[-1].get("ended_at") is not None:
            return
        attempts[-1] |= {"ended_at": int(time.time()), "ended_because": reason, "machine": machine}
        self.db.execute(
            "UPDATE jobs SET attempts = ? WHERE job_uuid = ?", (json.dumps(attempts), job_uuid)
        )
