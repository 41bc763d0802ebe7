"""Durable local jobs, for every trainer that runs workers on this machine: the PostTraining
API's job methods, composed of parts with one job each, and handed a `Trainer`:

- `store.py`        the jobs' SQLite records and folders;
- `checks.py`       what every local trainer checks at creation (`gather`, the refusals);
- `estimates.py`    work, memory, time and cost, and the check that a job fits;
- `launch.py`       starting a worker by the provider's launcher (local, torchrun, Ray);
- `supervision.py`  the queue, the watchdog, failure reasons, retries, cancel, restarts;
- `tracking.py`     feeding the experiment trackers from `metrics.jsonl`;
- `checkpoints.py`  listing, archiving, removing and publishing checkpoints;
- `exports.py`      merge and export jobs (a merged folder, a GGUF file), in a queue of their own.

What is a trainer's own (`trainer.py`): the methods it runs, its refusals, `prepare`
(finish a checked request into its worker's folder; in seconds, so a bad request never reaches a
worker), `worker` (the command that runs a job's folder), and optionally a calibration and a
lighter retry. Up to `max_concurrent_jobs` workers run at once, each in its own process; a crash
fails only its own job. Workers die with the server; at the next start, jobs that were running
are queued again and resume from their newest checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from llama_post import telemetry
from llama_post.apis.datasets import Datasets
from llama_post.apis.models import Models
from llama_post.apis.post_training import (
    ExportJob,
    ExportRequest,
    JobAttempt,
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
    JobProgress,
    JobStatus,
    ListExportsResponse,
    ListPostTrainingJobsResponse,
    MergeRequest,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PreferenceOptimizeRequest,
    PreflightResponse,
    ReinforceRequest,
    StepMetrics,
    SupervisedFineTuneRequest,
    TrainingEstimate,
    TrainingRequest,
)
from llama_post.apis.post_training.access import InferenceAccess
from llama_post.errors import ConflictError, InvalidRequestError
from llama_post.graders import GraderSettings
from llama_post.schema import FileContent
from providers.jobs.checkpoints import JobCheckpoints
from providers.jobs.checks import CreationChecks
from providers.jobs.config import LocalJobsConfig
from providers.jobs.estimates import Estimates
from providers.jobs.exports import ExportJobs
from providers.jobs.folder import Prepared, read_jsonl
from providers.jobs.launch import Launch
from providers.jobs.store import REQUEST, TERMINAL, JobStore
from providers.jobs.supervision import Supervisor
from providers.jobs.trackers import Roots, read_runs
from providers.jobs.tracking import Tracking
from providers.jobs.trainer import Trainer


class LocalJobs:
    """The PostTraining API's job methods over local worker processes, run for `trainer`."""

    def __init__(
        self,
        config: LocalJobsConfig,
        datasets: Datasets,
        models: Models,
        provider_id: str,
        trainer: Trainer,
    ) -> None:
        self.config = config
        self.provider_id = provider_id
        self.trainer = trainer
        config.checkpoint_root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(config.storage_dir)
        self.roots = roots = Roots(config.storage_dir, config.checkpoint_root)
        self.launch = Launch(config, self.store)
        self.checks = CreationChecks(config, datasets, models, trainer, self.launch, roots)
        self.estimates = Estimates(config, trainer)
        self.tracking = Tracking(self.store, roots)
        self.checkpoints = JobCheckpoints(self.store, models)
        self.supervisor = Supervisor(
            config, provider_id, self.store, self.launch, trainer, self.tracking, self.checkpoints
        )
        self.exports = ExportJobs(config, models, provider_id, self.store, self.checkpoints)
        telemetry.watch(self)

    async def started(self) -> None:
        """Once every model is loaded (the stack calls it then): take up the jobs that were
        running when the server stopped, then run the queue. A job that ends at once publishes
        `ft/<job>` over its base, which must be loaded by then."""
        await self.supervisor.start()
        self.exports.start()

    async def shutdown(self) -> None:
        """Stop workers without failing their jobs: they resume at the next start."""
        telemetry.forget(self)
        await self.supervisor.shutdown()
        await self.exports.shutdown()
        self.store.close()

    def count_by_state(self) -> dict[str, int]:
        """Every state's number of jobs, for the metrics (`telemetry.JobStore`)."""
        return self.store.count_by_state()

    # -- creating jobs -------------------------------------------------------------------------

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        return await self._create(request)

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        return await self._create(request)

    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob:
        return await self._create(request)

    def use_grader_settings(self, settings: GraderSettings) -> None:
        self.checks.grader_settings = settings

    def use_locations(self, usable: Callable[[Path], bool]) -> None:
        self.roots.usable = usable

    def use_inference_access(self, access: InferenceAccess) -> None:
        self.checks.inference_access = self.supervisor.inference_access = access

    def job_folders(self, job_uuid: str) -> list[Path]:
        if self.exports.holds(job_uuid):
            return self.exports.folders_of(job_uuid)
        if self.store.row(job_uuid) is None:
            return []
        return [self.store.folder(job_uuid).path, self.store.checkpoint_dir(job_uuid)]

    async def prepare(self, request: TrainingRequest, job_uuid: str) -> Prepared:
        """Check the request against its model and data (`checks.py`), then the trainer's
        `prepare`: what a job's worker reads, the rows rendered, the pre-flight report."""
        got = await self.checks.gather(request, job_uuid)
        return await self.trainer.prepare(got, self.store.jobs_dir / job_uuid)

    async def _create(self, request: TrainingRequest) -> PostTrainingJob:
        job_uuid = request.job_uuid or f"{request.method}-{secrets.token_hex(8)}"
        if self.store.row(job_uuid) is not None or self.exports.holds(job_uuid):
            raise ConflictError(f"job {job_uuid!r} already exists", param="job_uuid")
        prepared = await self.prepare(request, job_uuid)
        await self.launch.check(prepared)
        errors = prepared.report.errors
        if errors:
            shown = "; ".join(f"row {e.row}: {e.message}" for e in errors[:5])
            raise InvalidRequestError(
                f"{len(errors)} training row(s) cannot be used: {shown}",
                param="training_config.data_config.dataset_id",
            )
        figures = await asyncio.to_thread(self.estimates.check, prepared)
        prepared.files["estimate.json"] = figures.model_dump_json()
        await asyncio.to_thread(self.store.folder(job_uuid).write, prepared)
        self.store.insert(request.model_copy(update={"job_uuid": job_uuid}))
        self.supervisor.wake()
        return PostTrainingJob(job_uuid=job_uuid)

    async def preflight(self, request: SupervisedFineTuneRequest) -> PreflightResponse:
        prepared = await self.prepare(request, request.job_uuid or "preflight")
        figures = await asyncio.to_thread(self.estimates.estimate, prepared, False)
        return prepared.report.model_copy(update={"estimate": figures})

    async def estimate(self, request: SupervisedFineTuneRequest) -> TrainingEstimate:
        return await self._estimated(request)

    async def estimate_preference(self, request: PreferenceOptimizeRequest) -> TrainingEstimate:
        return await self._estimated(request)

    async def estimate_reinforce(self, request: ReinforceRequest) -> TrainingEstimate:
        return await self._estimated(request)

    async def _estimated(self, request: TrainingRequest) -> TrainingEstimate:
        prepared = await self.prepare(request, request.job_uuid or "estimate")
        return await asyncio.to_thread(self.estimates.estimate, prepared, True)

    # -- reading jobs --------------------------------------------------------------------------

    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        return ListPostTrainingJobsResponse(
            data=[PostTrainingJob(job_uuid=j) for j in self.store.ids()]
        )

    async def get_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        row = self.store.existing(job_uuid)
        request = REQUEST.validate_json(row["request"])
        folder = self.store.folder(job_uuid)
        figures = folder.path / "estimate.json"
        return PostTrainingJobStatusResponse(
            job_uuid=job_uuid,
            status=JobStatus(row["status"]),
            model=request.model_id,
            method=request.method,
            algorithm=request.tuning.type,
            scheduled_at=row["scheduled_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            resources_allocated=json.loads(row["resources"]) if row["resources"] else None,
            checkpoints=self.checkpoints.list(job_uuid, row["fine_tuned_model"]),
            progress=JobProgress.model_validate_json(folder.progress.read_text())
            if folder.progress.is_file()
            else JobProgress(),
            error=row["error"],
            fine_tuned_model=row["fine_tuned_model"],
            metadata=request.metadata,
            provider_id=self.provider_id,
            attempts=[JobAttempt.model_validate(a) for a in json.loads(row["attempts"])],
            estimate=TrainingEstimate.model_validate_json(figures.read_text())
            if figures.is_file()
            else None,
            request=request,
            trackers=read_runs(folder.path),
        )

    async def cancel_job(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        status = self.store.status(job_uuid)
        if status in TERMINAL:
            raise ConflictError(f"job {job_uuid!r} is already {status.value}", param="job_uuid")
        await self.supervisor.cancel(job_uuid)
        return await self.get_job_status(job_uuid)

    async def get_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        row = self.store.existing(job_uuid)
        return PostTrainingJobArtifactsResponse(
            job_uuid=job_uuid,
            checkpoints=self.checkpoints.list(job_uuid, row["fine_tuned_model"]),
        )

    async def get_job_logs(self, job_uuid: str) -> JobLogsResponse:
        self.store.existing(job_uuid)
        path = self.store.folder(job_uuid).log
        text = path.read_text(errors="replace") if path.is_file() else ""
        return JobLogsResponse(job_uuid=job_uuid, lines=text.splitlines()[-10000:])

    async def get_job_metrics(self, job_uuid: str) -> JobMetricsResponse:
        self.store.existing(job_uuid)
        rows = read_jsonl(self.store.folder(job_uuid).metrics)
        return JobMetricsResponse(
            job_uuid=job_uuid, data=[StepMetrics.model_validate(m) for m in rows]
        )

    async def stream_job_events(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        self.store.existing(job_uuid)
        return self._follow(job_uuid)

    async def _follow(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        folder = self.store.folder(job_uuid)
        log_offset, metrics_seen = 0, 0
        while True:
            status = await self.get_job_status(job_uuid)
            if folder.log.is_file():
                with folder.log.open("rb") as f:
                    f.seek(log_offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                log_offset += len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    yield JobEvent(type="log", log=line)
            metrics = read_jsonl(folder.metrics)
            for m in metrics[metrics_seen:]:
                yield JobEvent(type="metrics", metrics=StepMetrics.model_validate(m))
            metrics_seen = max(metrics_seen, len(metrics))
            if status.status in TERMINAL:
                yield JobEvent(type="status", status=status)
                return
            await asyncio.sleep(0.5)

    async def checkpoint_archive(self, job_uuid: str, checkpoint_id: str) -> FileContent:
        return await self.checkpoints.archive(job_uuid, checkpoint_id)

    async def remove_checkpoint(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        await self.checkpoints.remove(job_uuid, checkpoint_id, reason)

    # -- merge and export jobs (`exports.py`) --------------------------------------------------

    async def merge_adapter(self, request: MergeRequest) -> ExportJob:
        return await self.exports.merge(request)

    async def export_model(self, request: ExportRequest) -> ExportJob:
        return await self.exports.export(request)

    async def list_exports(self) -> ListExportsResponse:
        return self.exports.list()

    async def get_export(self, export_id: str) -> ExportJob:
        return self.exports.get(export_id)

    async def cancel_export(self, export_id: str) -> ExportJob:
        return await self.exports.cancel(export_id)

    async def export_download(self, export_id: str) -> FileContent:
        return await self.exports.download(export_id)
