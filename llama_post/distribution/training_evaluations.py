"""The benchmarks a post-training job names (`evaluations`), run by the stack: a task reads the
jobs that name some every `interval` seconds and starts an evaluation job for each new
checkpoint (`every_checkpoint`) and for the fine-tuned model once the job completes (`at_end`),
one per benchmark, as the job's owner, through the guarded Evaluations API (so the evaluations
are the owner's, over what the owner may use). Each start is recorded in the stack's
`evaluations.db`, so a restarted server starts none twice; a start that is refused (a benchmark
deleted since) is recorded with its error and logged; `NamedBenchmarks` refuses a job, as it is
created, that names one missing or not its caller's. The evaluations carry the job in their
metadata: `GET /v1/evaluation/jobs?job_uuid=...` lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from llama_post.apis.evaluations import CreateEvaluationRequest
from llama_post.apis.post_training import JobStatus, TrainingEvaluations
from llama_post.auth import PRINCIPAL, Principal
from llama_post.distribution.owners import Owners
from llama_post.errors import LlamaPostError, NotFoundError
from llama_post.storage import Database

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS training_evaluations (
    job_uuid TEXT NOT NULL,
    target TEXT NOT NULL,
    benchmark_id TEXT NOT NULL,
    evaluation_id TEXT,
    error TEXT,
    PRIMARY KEY (job_uuid, target, benchmark_id)
);
CREATE TABLE IF NOT EXISTS watched_jobs (job_uuid TEXT PRIMARY KEY);
"""
ENDED = {JobStatus.completed, JobStatus.failed, JobStatus.cancelled}


class NamedBenchmarks:
    """The post-training API with each creation's `evaluations.benchmarks` read first, as its
    caller, through the guarded Evaluations API: one missing or not the caller's is a 400 naming
    `evaluations.benchmarks[i]`, before anything starts."""

    def __init__(self, jobs: Any, evaluations: Any) -> None:
        self.jobs = jobs
        self.evaluations = evaluations

    def __getattr__(self, name: str) -> Any:  # every other route, as it was
        return getattr(self.__dict__["jobs"], name)

    async def supervised_fine_tune(self, request: Any) -> Any:
        await self._check(request)
        return await self.jobs.supervised_fine_tune(request)

    async def preference_optimize(self, request: Any) -> Any:
        await self._check(request)
        return await self.jobs.preference_optimize(request)

    async def reinforce(self, request: Any) -> Any:
        await self._check(request)
        return await self.jobs.reinforce(request)

    async def _check(self, request: Any) -> None:
        wanted = request.evaluations
        for i, benchmark_id in enumerate(wanted.benchmarks if wanted is not None else []):
            try:
                await self.evaluations.get_benchmark(benchmark_id)
            except NotFoundError:
                field = f"evaluations.benchmarks[{i}]"
                # a 404 naming the field, as for a job's unknown dataset
                raise NotFoundError(
                    f"{field}: no benchmark {benchmark_id!r} (`POST /v1/evaluation/benchmarks` "
                    "registers one)",
                    param=field,
                ) from None


class TrainingWatch:
    """`evaluations` is the guarded Evaluations API; `post_training` looked up when needed."""

    def __init__(
        self,
        evaluations: Any,
        post_training: Callable[[], Any],
        owners: Owners | None,
        db: Database,
        interval: float = 2.0,
    ) -> None:
        self.evaluations = evaluations
        self.post_training = post_training
        self.owners = owners
        self.db = db  # `EvaluationService`'s, which creates this module's tables (`SCHEMA`)
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="training evaluations")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        PRINCIPAL.set(None)  # reads every job, then acts as each job's owner
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("reading the jobs' evaluations failed; trying again")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        post_training = self.post_training()
        if post_training is None:
            return
        done = {r["job_uuid"] for r in self.db.all("SELECT job_uuid FROM watched_jobs")}
        for job in (await post_training.list_jobs()).data:
            if job.job_uuid in done:
                continue
            try:
                status = await post_training.get_job_status(job.job_uuid)
            except LlamaPostError as e:  # its server unreachable now: read again next time
                log.debug("job %s: %s", job.job_uuid, e.message)
                continue
            wanted = status.request.evaluations if status.request is not None else None
            if wanted is not None:
                for target, chosen in _targets(status, wanted).items():
                    for benchmark_id in wanted.benchmarks:
                        await self._start(status.job_uuid, target, benchmark_id, chosen, wanted)
            if wanted is None or status.status in ENDED:
                self.db.execute(
                    "INSERT OR IGNORE INTO watched_jobs (job_uuid) VALUES (?)", (job.job_uuid,)
                )

    async def _start(
        self,
        job_uuid: str,
        target: str,
        benchmark_id: str,
        chosen: dict[str, Any],
        wanted: TrainingEvaluations,
    ) -> None:
        seen = self.db.one(
            "SELECT 1 FROM training_evaluations WHERE job_uuid = ? AND target = ? "
            "AND benchmark_id = ?",
            (job_uuid, target, benchmark_id),
        )
        if seen is not None:
            return
        owner = self.owners.owner_of("job", job_uuid) if self.owners is not None else None
        token = PRINCIPAL.set(Principal(owner, False, "") if owner else None)
        evaluation_id, error = None, None
        try:
            made = await self.evaluations.create_evaluation(
                CreateEvaluationRequest.model_validate(
                    {
                        "benchmark_id": benchmark_id,
                        "sampling": {"max_tokens": wanted.max_tokens},
                        "max_rows": wanted.max_rows,
                        "metadata": {"job_uuid": job_uuid, "target": target},
                        **chosen,
                    }
                )
            )
            evaluation_id = made.evaluation_id
        except LlamaPostError as e:
            error = e.message
            log.warning("job %s: benchmark %s on %s: %s", job_uuid, benchmark_id, target, error)
        finally:
            PRINCIPAL.reset(token)
        self.db.execute(
            "INSERT OR IGNORE INTO training_evaluations (job_uuid, target, benchmark_id, "
            "evaluation_id, error) VALUES (?, ?, ?, ?, ?)",
            (job_uuid, target, benchmark_id, evaluation_id, error),
        )


def _targets(status: Any, wanted: TrainingEvaluations) -> dict[str, dict[str, Any]]:
    """What to evaluate now, by a name recorded once: each checkpoint, and the fine-tuned model
    (its final checkpoint's name where it has one)."""
    targets: dict[str, dict[str, Any]] = {}
    if wanted.every_checkpoint:
        for checkpoint in status.checkpoints:
            targets[checkpoint.identifier] = {"checkpoint": checkpoint.identifier}
    if wanted.at_end and status.status == JobStatus.completed and status.fine_tuned_model:
        final = next(
            (c.identifier for c in status.checkpoints if c.model_id == status.fine_tuned_model),
            f"{status.job_uuid}/end",
        )
        targets[final] = {"model": status.fine_tuned_model}
    return targets
