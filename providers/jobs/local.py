"""Durable local jobs, for every trainer that runs workers on this machine: SQLite records, a
queue, worker processes, cancel, failure reasons, restart recovery, logs, metrics, events,
checkpoints, and the publication of the final checkpoint as the model `ft/<job>`.

A trainer subclasses `LocalJobs` with two things of its own: `prepare` (validate a request
against its model and data, and snapshot the rows; in seconds, so a bad request never reaches a
worker) and `worker` (the command that runs a job's folder). Up to `max_concurrent_jobs` workers
run at once, each in its own process; a crash fails only its own job. Workers die with the
server; at the next start, jobs that were running are queued again and resume from their newest
checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from llama_post import archives, telemetry
from llama_post.apis.datasets import DatasetPurpose, Datasets, IterRowsRequest
from llama_post.apis.models import (
    AdapterSource,
    HuggingFaceSource,
    Model,
    Models,
    RegisterModelRequest,
)
from llama_post.apis.post_training import (
    Calibration,
    Checkpoint,
    JobAttempt,
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
    JobProgress,
    JobStatus,
    ListPostTrainingJobsResponse,
    LoraFinetuningConfig,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PreferenceOptimizeRequest,
    PreflightResponse,
    ReinforceRequest,
    StepMetrics,
    SupervisedFineTuneRequest,
    TrainingEstimate,
    TrainingMetrics,
    TrainingRequest,
)
from llama_post.apis.post_training.models import JOB_UUID_PATTERN
from llama_post.archives import read_chunks
from llama_post.errors import ConflictError, InvalidRequestError, NotFoundError, UpstreamError
from llama_post.graders import GraderRunner, GraderSettings
from llama_post.schema import FileContent
from llama_post.storage import Database, check_id
from providers.jobs.config import LocalJobsConfig
from providers.jobs.folder import (
    ATTEMPT_ENV,
    EXIT_CANCELLED,
    EXIT_LOST,
    EXIT_NONFINITE,
    EXIT_OUT_OF_MEMORY,
    JobFolder,
    JobSpec,
    Prepared,
    checkpoints,
    read_heartbeat,
    read_jsonl,
)
from providers.jobs.launchers import RayLauncher, TorchrunLauncher
from providers.jobs.ray import RayClient, RayJob, RayUnavailable, submission_id
from providers.jobs.trackers import Forwarder, Roots, read_runs, trackers_of
from providers.jobs.trackers import refusals as tracker_refusals
from providers.training.data import steps_per_epoch
from providers.training.estimate import Shape, Work, available_memory, count
from providers.training.estimate import memory as estimate_memory
from providers.training.reinforce import refusals as reinforce_refusals
from providers.utils.precision import UnsupportedPrecision, choose

log = logging.getLogger(__name__)
REQUEST: TypeAdapter[TrainingRequest] = TypeAdapter(TrainingRequest)
JOB_ID = re.compile(JOB_UUID_PATTERN)
CHECKOUT = str(Path(__file__).resolve().parents[2])  # where a Ray job imports providers/ from
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


@dataclass
class Gathered:
    """A request's model and rows, found and checked; its spec, for the trainer to finish."""

    model: Model
    spec: JobSpec
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]] | None


class LocalJobs:
    """The PostTraining API's job methods over local worker processes."""

    def __init__(
        self, config: LocalJobsConfig, datasets: Datasets, models: Models, provider_id: str
    ) -> None:
        self.config = config
        self.provider_id = provider_id
        self.datasets = datasets
        self.models = models
        self.jobs_dir = config.storage_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        config.checkpoint_root.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.storage_dir / "jobs.db", SCHEMA)
        columns = {r["name"] for r in self.db.all("PRAGMA table_info(jobs)")}
        if "attempts" not in columns:  # a store from before attempts were recorded
            self.db.execute("ALTER TABLE jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]'")
        self.workers: dict[str, asyncio.subprocess.Process | RayJob] = {}
        self.monitors: dict[str, asyncio.Task[None]] = {}
        self.cancelling: set[str] = set()
        self.stalled: dict[str, str] = {}  # job -> why the watchdog killed its worker
        self.overrun: dict[str, str] = {}  # job -> the limit of its own it ran past
        self.launched_at: dict[str, float] = {}
        self.running: dict[str, TrainingRequest] = {}  # read once a launch, for the watchdog
        self.roots = Roots(config.storage_dir, config.checkpoint_root)
        self.forwarders: dict[str, Forwarder] = {}  # jobs with trackers, from their first launch
        self.forwarding: dict[str, asyncio.Task[None]] = {}
        self.steps_seen: dict[str, int] = {}  # job -> the highest step counted in the metrics
        self.stopping = False
        self.launcher = config.launcher
        self.ray = RayClient(config.launcher) if isinstance(config.launcher, RayLauncher) else None
        self.ray_checked_at = 0.0  # when a probe job last wrote into the shared folders
        self.attempt_names: dict[str, str] = {}  # job -> its running attempt's ATTEMPT_ENV
        self.grader_settings = GraderSettings()  # the distribution's, once the stack sets them
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        telemetry.watch(self)

    async def start(self) -> None:
        interrupted = self.db.all(
            "SELECT job_uuid FROM jobs WHERE status = ?", (JobStatus.in_progress.value,)
        )
        for row in interrupted:
            job_uuid = row["job_uuid"]
            attempts = self._attempts(job_uuid)
            if await self._reattach(job_uuid, attempts):
                continue
            if attempts and attempts[-1].get("ended_at") is None:
                # the server did not stop this worker itself (it crashed, or was killed): that
                # counts against the job's retries; a worker stopped with the server does not
                reason = "the server stopped under it (it crashed or was killed)"
                self._end_attempt(job_uuid, reason, machine=True)
                self._retry_or_fail(job_uuid, reason)
            else:
                self._note(job_uuid, "the server started again; the job resumes")
                self.db.execute(
                    "UPDATE jobs SET status = ? WHERE job_uuid = ?",
                    (JobStatus.scheduled.value, job_uuid),
                )
        if interrupted:
            log.info("%d job(s) were running when the server stopped", len(interrupted))
        for row in interrupted:  # out of retries: its trackers' runs end failed
            await self._end_trackers(row["job_uuid"])
        self._scheduler = asyncio.create_task(self._schedule())
        self._watchdog = asyncio.create_task(self._watch())
        self._wake.set()

    async def _reattach(self, job_uuid: str, attempts: list[dict[str, Any]]) -> bool:
        """Follow a Ray job the previous server submitted, if Ray still knows it."""
        if self.ray is None or not attempts or attempts[-1].get("ended_at") is not None:
            return False
        name = attempts[-1].get("submission_id")
        try:
            found = name is not None and await self.ray.info(name) is not None
        except Exception:
            log.warning("job %s: Ray could not be asked about %s", job_uuid, name, exc_info=True)
            found = False
        if not found:
            return False
        self._note(job_uuid, f"the server started again; it follows Ray job {name}")
        worker = RayJob(self.ray, str(name))
        self.attempt_names[job_uuid] = f"{job_uuid}/{attempts[-1]['attempt']}"
        self.launched_at[job_uuid] = time.time()
        self.running[job_uuid] = self._request(job_uuid)
        self.steps_seen.setdefault(job_uuid, self._progress_step(job_uuid))
        if trackers_of(self.running[job_uuid]):
            self.forwarders[job_uuid] = self._forwarder(job_uuid)
        self.workers[job_uuid] = worker
        self.monitors[job_uuid] = asyncio.create_task(self._monitor(job_uuid, worker))
        return True

    async def shutdown(self) -> None:
        """Stop workers without failing their jobs: they resume at the next start."""
        self.stopping = True
        telemetry.forget(self)
        for task in (self._scheduler, self._watchdog):
            if task:
                task.cancel()
        ray_jobs = {j for j, w in self.workers.items() if isinstance(w, RayJob)}
        for job_uuid in ray_jobs:  # they go on in the cluster; the next server re-attaches
            self.monitors[job_uuid].cancel()
            self.workers.pop(job_uuid)
        for job_uuid in list(self.workers):
            self._end_attempt(job_uuid, "the server was stopped; the job resumes when it starts")
        for proc in list(self.workers.values()):
            _signal(proc, signal.SIGTERM)
        if self.monitors:
            await asyncio.wait(
                list(self.monitors.values()), timeout=self.config.cancel_grace_seconds
            )
        for proc in list(self.workers.values()):
            _signal(proc, signal.SIGKILL)
        if self.ray is not None:
            await self.ray.aclose()
        self.db.close()

    # -- creating jobs -------------------------------------------------------------------------

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        return await self._create(request, "sft")

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        return await self._create(request, "dpo")

    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob:
        return await self._create(request, "grpo")

    def use_grader_settings(self, settings: GraderSettings) -> None:
        self.grader_settings = settings

    async def _create(self, request: TrainingRequest, prefix: str) -> PostTrainingJob:
        job_uuid = request.job_uuid or f"{prefix}-{secrets.token_hex(8)}"
        if self._row(job_uuid) is not None:
            raise ConflictError(f"job {job_uuid!r} already exists", param="job_uuid")
        prepared = await self.prepare(request, job_uuid)
        await self._check_launcher(prepared)
        errors = prepared.report.errors
        if errors:
            shown = "; ".join(f"row {e.row}: {e.message}" for e in errors[:5])
            raise InvalidRequestError(
                f"{len(errors)} training row(s) cannot be used: {shown}",
                param="training_config.data_config.dataset_id",
            )
        figures = await asyncio.to_thread(self._check_estimate, prepared)
        prepared.files["estimate.json"] = figures.model_dump_json()
        job_dir = self.jobs_dir / job_uuid
        await asyncio.to_thread(JobFolder(job_dir).write, prepared)
        request = request.model_copy(update={"job_uuid": job_uuid})
        self.db.execute(
            "INSERT INTO jobs (job_uuid, request, status, scheduled_at) VALUES (?, ?, ?, ?)",
            (job_uuid, request.model_dump_json(), JobStatus.scheduled.value, int(time.time())),
        )
        self._wake.set()
        return PostTrainingJob(job_uuid=job_uuid)

    async def _check_launcher(self, prepared: Prepared) -> None:
        """Refuse a job its launcher cannot run here: too few rows for every rank's share of a
        step, a Ray cluster out of reach, or shared folders a Ray job cannot write."""
        spec = prepared.spec
        cfg = spec.request.training_config
        if spec.ranks > 1:
            needed = cfg.data.batch_size * cfg.gradient_accumulation_steps * spec.ranks
            if len(prepared.train) < needed:
                raise InvalidRequestError(
                    f"training_config.data_config.batch_size: a step of {spec.ranks} ranks "
                    f"takes batch_size x gradient_accumulation_steps x ranks = {needed} rows; "
                    f"the dataset has {len(prepared.train)}",
                    param="training_config.data_config.batch_size",
                )
        if self.ray is None or time.time() - self.ray_checked_at < 300:
            return
        address = self.ray.launcher.address
        try:
            await self.ray.version()
        except RayUnavailable as exc:
            raise InvalidRequestError(
                f"launcher.address: the Ray cluster at {address} cannot be reached ({exc}); "
                "start it or correct the provider's launcher.address",
                param="launcher.address",
            ) from None
        folders = [self.jobs_dir, self.config.checkpoint_root]
        why = await self.ray.probe(folders, sys.executable)
        if why is not None:
            raise InvalidRequestError(
                f"checkpoint_root: {why} ({', '.join(map(str, folders))}); the provider's "
                "storage_dir and checkpoint_root must be storage every Ray node can write",
                param="checkpoint_root",
            )
        self.ray_checked_at = time.time()

    async def preflight(self, request: SupervisedFineTuneRequest) -> PreflightResponse:
        prepared = await self.prepare(request, request.job_uuid or "preflight")
        figures = await asyncio.to_thread(self._estimate, prepared, False)
        return prepared.report.model_copy(update={"estimate": figures})

    # -- estimates -----------------------------------------------------------------------------

    async def estimate(self, request: SupervisedFineTuneRequest) -> TrainingEstimate:
        return await self._estimated(request)

    async def estimate_preference(self, request: PreferenceOptimizeRequest) -> TrainingEstimate:
        return await self._estimated(request)

    async def _estimated(self, request: TrainingRequest) -> TrainingEstimate:
        prepared = await self.prepare(request, request.job_uuid or "estimate")
        return await asyncio.to_thread(self._estimate, prepared, True)

    def calibrator(self, folder: Path) -> list[str] | None:
        """The command that calibrates a job's largest micro-batch in `folder` (see
        `providers/training/estimate.py`); None where the trainer has none. The trainer's."""
        return None

    def _estimate(self, prepared: Prepared, calibrate: bool) -> TrainingEstimate:
        """The job's work, memory, time and cost on this device (time and cost need a
        calibration: measured now, or found in the cache)."""
        spec = prepared.spec
        request = spec.request
        shape = Shape.read(spec.base_folder)
        plan = steps_per_epoch([row[0] for row in prepared.examples], request, spec.ranks)
        work = count(request, prepared.examples, plan, spec.low_memory, shape)
        memory = estimate_memory(shape, request, spec.dtype, work.largest, spec.low_memory)
        memory.available = self.config.memory_limit_bytes or available_memory(spec.device)
        calibration = self._calibration(spec, work, run=calibrate)
        wall = cost = None
        if calibration is not None:
            memory.peak = calibration.peak_memory
            every = request.training_config.save_every
            saves = 1 + (sum(plan) // every if every else 0)
            wall = (
                calibration.load_seconds
                + work.flops / calibration.flops_per_second
                + saves * calibration.save_seconds
            )
            if self.config.price_per_device_hour is not None:
                cost = wall / 3600 * self.config.price_per_device_hour
        return TrainingEstimate(
            device=spec.device,
            dtype=spec.dtype,
            optimizer_steps=sum(plan),
            tokens=work.tokens,
            trained_tokens=work.trained,
            flops=work.flops,
            memory=memory,
            wall_seconds=wall,
            cost=cost,
            calibration=calibration,
        )

    def _calibration(self, spec: JobSpec, work: Work, run: bool) -> Calibration | None:
        """The calibration of this model, setting and micro-batch shape: from the cache, or
        (with `run`) run now, a few micro-steps in a worker process of the trainer's."""
        folder = self.config.storage_dir / "calibrations"
        request = spec.request
        key = hashlib.sha256(
            json.dumps(
                {
                    "base": spec.base_folder,
                    "adapter": spec.adapter_folder,
                    "method": type(request).__name__,
                    "tuning": request.tuning.model_dump(mode="json"),
                    "optimizer": request.training_config.optimizer.optimizer_type,
                    "efficiency": request.training_config.efficiency_config
                    and request.training_config.efficiency_config.model_dump(mode="json"),
                    "device": spec.device,
                    "dtype": spec.dtype,
                    "threads": spec.torch_threads,
                    "low_memory": spec.low_memory,
                    "batch": [[len(e.input_ids) for e in row] for row in work.largest],
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:24]
        cached = folder / f"{key}.json"
        if cached.is_file():
            return Calibration.model_validate_json(cached.read_text()).model_copy(
                update={"cached": True}
            )
        scratch = folder / f"{key}.partial"
        command = self.calibrator(scratch)
        if command is None or not run:
            return None
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            (scratch / "job.json").write_text(spec.model_dump_json())
            (scratch / "batch.json").write_text(
                json.dumps(
                    [
                        [{"input_ids": e.input_ids, "labels": e.labels} for e in row]
                        for row in work.largest
                    ]
                )
            )
            launched = time.time()
            ran = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
            if ran.returncode != 0:
                tail = (ran.stderr or ran.stdout).strip().splitlines()[-1:]
                log.warning("calibration failed: %s", tail)
                raise InvalidRequestError(
                    f"the calibration run failed: {tail[0] if tail else ran.returncode}",
                    param="training_config",
                )
            measured = json.loads((scratch / "calibration.json").read_text())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        calibration = Calibration(
            seconds_per_micro_step=measured["seconds_per_micro_step"],
            flops_per_second=work.largest_flops / measured["seconds_per_micro_step"],
            load_seconds=measured["loaded_at"] - launched,  # the interpreter's start included
            save_seconds=measured["save_seconds"],
            peak_memory=measured["peak_memory"],
            cached=False,
        )
        cached.write_text(calibration.model_dump_json())
        return calibration

    def _check_estimate(self, prepared: Prepared) -> TrainingEstimate:
        """Refuse a job that will not fit the device, or whose estimate exceeds its limits."""
        request = prepared.spec.request
        limits = request.supervision
        calibrate = limits.max_wall_seconds is not None or limits.max_cost is not None
        figures = self._estimate(prepared, calibrate)
        memory = figures.memory
        if memory.available is not None and memory.peak > memory.available:
            raise InvalidRequestError(
                f"training_config: the job needs about {_gib(memory.peak)} at its peak "
                f"(weights {_gib(memory.weights)}, trained state {_gib(memory.trained_state)}, "
                f"activations {_gib(memory.activations)}, logits {_gib(memory.logits)}, runtime "
                f"{_gib(memory.runtime)}) and the device {figures.device} has "
                f"{_gib(memory.available)}; use LoRA, a smaller batch_size or max_seq_len, or "
                "activation checkpointing",
                param="training_config",
            )
        wall = figures.wall_seconds
        if (
            limits.max_wall_seconds is not None
            and wall is not None
            and wall > limits.max_wall_seconds
        ):
            raise InvalidRequestError(
                f"supervision.max_wall_seconds: the job is estimated to take "
                f"{figures.wall_seconds:.0f} s here ({figures.optimizer_steps} steps, "
                f"{figures.tokens} tokens, {figures.flops:.3g} FLOPs), more than "
                f"{limits.max_wall_seconds:g} s",
                param="supervision.max_wall_seconds",
            )
        cost = figures.cost
        if limits.max_cost is not None and cost is not None and cost > limits.max_cost:
            raise InvalidRequestError(
                f"supervision.max_cost: the job is estimated to cost {figures.cost:.4g} "
                f"({figures.wall_seconds:.0f} s at {self.config.price_per_device_hour:g} "
                f"an hour), more than {limits.max_cost:g}",
                param="supervision.max_cost",
            )
        return figures

    async def prepare(self, request: TrainingRequest, job_uuid: str) -> Prepared:
        """Check the request against its model and data; snapshot the rows. The trainer's."""
        raise NotImplementedError

    def worker(self, request: TrainingRequest, job_dir: Path) -> list[str]:
        """The command that runs the job in `job_dir`. The trainer's."""
        raise NotImplementedError

    multi_rank: frozenset[str] = frozenset()  # the methods whose recipes run as torchrun's ranks

    async def gather(self, request: TrainingRequest, job_uuid: str) -> Gathered:
        """What every trainer checks first: the model (registered, its weights readable here,
        a LoRA rank its provider serves), the trainer's own refusals (`refuse`), and the rows,
        read from the datasets and checked against the job's method."""
        request.training_config.data  # noqa: B018  (a job without a dataset: the 400 first)
        if isinstance(request, ReinforceRequest):
            request.grading  # noqa: B018  (nor without a grader)
        model_field, tuning_field = request.model_field, request.tuning_field
        try:
            model = await self.models.get_model(request.model_id)
        except NotFoundError:
            raise NotFoundError(
                f"{model_field}: no registered model {request.model_id!r}", param=model_field
            ) from None
        weights = model.weights
        if weights is None:
            raise InvalidRequestError(
                f"{model_field}: {model.id!r} is served by provider {model.provider_id!r}, which "
                "holds its weights where this server cannot read them; map the upstream's "
                "folder to one here (the provider's path_map) or train a model held here",
                param=model_field,
            )
        self.refuse(request)  # after the lookups: a missing model is a 404 first
        if isinstance(request, ReinforceRequest):  # a bad template or pattern: a 400 naming it
            GraderRunner(request.grading, self.grader_settings)
        base, adapter = weights.path, weights.adapter_path
        rank = getattr(request.tuning, "rank", None)
        if rank is not None and model.max_lora_rank is not None and rank > model.max_lora_rank:
            raise InvalidRequestError(
                f"{tuning_field}.rank: provider {model.provider_id!r} serves LoRA ranks up to "
                f"{model.max_lora_rank} over {model.id!r}; train with rank <= "
                f"{model.max_lora_rank}",
                param=f"{tuning_field}.rank",
            )
        if adapter is not None and not isinstance(request.tuning, LoraFinetuningConfig):
            raise InvalidRequestError(
                f"{tuning_field}: {request.model_id!r} is a LoRA adapter; continue it with LoRA",
                param=f"{tuning_field}.type",
            )
        data = request.training_config.data
        if request.method == "dpo":
            wanted = {DatasetPurpose.preference}
        elif request.method == "grpo":
            wanted = {DatasetPurpose.prompt}
        elif data.data_format is None:  # the dataset's purpose says how to read its rows
            wanted = {DatasetPurpose.instruct, DatasetPurpose.dialog}
        else:
            wanted = {DatasetPurpose(data.data_format)}
        train, purpose = await self._rows(data.dataset_id, wanted, "dataset_id")
        if request.method == "sft":
            data.data_format = "instruct" if purpose == DatasetPurpose.instruct else "dialog"
        validation = None
        if data.validation_dataset_id:
            validation, _ = await self._rows(
                data.validation_dataset_id, {purpose}, "validation_dataset_id"
            )
        if request.method != "sft" and data.data_format is not None:
            check_prompt_field(data.data_format, train, validation)
        checkpoint_dir = self._checkpoint_dir(request, job_uuid)
        device = self._device()
        try:
            precision = await asyncio.to_thread(choose, request.training_config.dtype, device)
        except UnsupportedPrecision as exc:
            raise InvalidRequestError(
                f"training_config.dtype: {exc}", param="training_config.dtype"
            ) from None
        spec = JobSpec(
            job_uuid=job_uuid,
            request=request,
            base_folder=base,
            adapter_folder=adapter,
            checkpoint_dir=str(checkpoint_dir),
            device=device,
            dtype=precision.precision,
            dtype_reason=precision.why,
            torch_threads=self.config.torch_threads,
            ranks=self._ranks(),
            sharding=self._torchrun.sharding if self._torchrun else "none",
            grader_settings=dataclasses.asdict(self.grader_settings)
            if isinstance(request, ReinforceRequest)
            else {},
        )
        return Gathered(model, spec, train, validation)

    @property
    def _torchrun(self) -> TorchrunLauncher | None:
        launcher = self.launcher
        if isinstance(launcher, RayLauncher):
            return launcher.torchrun
        return launcher if isinstance(launcher, TorchrunLauncher) else None

    def _ranks(self) -> int:
        torchrun = self._torchrun
        return torchrun.nproc_per_node * torchrun.nnodes if torchrun else 1

    def refuse(self, request: TrainingRequest) -> None:
        """Raise a 400 naming the first field this trainer cannot honour."""
        for field, why in self.refusals(request):
            raise InvalidRequestError(f"{field}: {why}", param=field)

    def refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        """(field, why) for each field of the request this trainer cannot honour; a trainer
        extends the list every local trainer shares."""
        refusals = []
        algo = request.tuning
        tuning_field = request.tuning_field
        if isinstance(algo, LoraFinetuningConfig) and algo.quantize_base:
            refusals.append(
                (
                    f"{tuning_field}.quantize_base",
                    "a quantized base is not supported; leave it unset or false",
                )
            )
        data = request.training_config.data
        if request.method != "sft":
            what = "DPO trains on whole pairs" if request.method == "dpo" else "GRPO samples"
            if data.packed:
                refusals.append(
                    (
                        "training_config.data_config.packed",
                        f"{what}; leave it unset or false",
                    )
                )
            if data.train_on_input:
                refusals.append(
                    (
                        "training_config.data_config.train_on_input",
                        f"{request.method.upper()} learns from the answers only; leave it unset "
                        "or false",
                    )
                )
        if isinstance(request, ReinforceRequest):
            refusals += reinforce_refusals(request)
        eff = request.training_config.efficiency_config
        if (
            eff is not None
            and not eff.enable_activation_checkpointing
            and "activation_checkpointing_every_n_layers" in eff.model_fields_set
        ):
            refusals.append(
                (
                    "training_config.efficiency_config.activation_checkpointing_every_n_layers",
                    "applies only with enable_activation_checkpointing; leave it unset or false",
                )
            )
        if eff is not None:
            for name in (
                "enable_activation_offloading",
                "memory_efficient_fsdp_wrap",
                "fsdp_cpu_offload",
            ):
                if getattr(eff, name):
                    refusals.append(
                        (
                            f"training_config.efficiency_config.{name}",
                            "is not supported by the single-process trainer; leave it false",
                        )
                    )
        limits = request.supervision
        if (limits.max_wall_seconds or limits.max_cost) and self.calibrator(Path()) is None:
            field = "max_wall_seconds" if limits.max_wall_seconds else "max_cost"
            refusals.append(
                (
                    f"supervision.{field}",
                    "this trainer runs no calibration, so it cannot estimate a job's time; "
                    "leave it unset",
                )
            )
        refusals += self._launcher_refusals(request)
        refusals += tracker_refusals(request, self.roots)
        if limits.max_cost and self.config.price_per_device_hour is None:
            refusals.append(
                (
                    "supervision.max_cost",
                    "the provider sets no price_per_device_hour, so a job has no cost here",
                )
            )
        if request.hyperparam_search_config:
            refusals.append(
                (
                    "hyperparam_search_config",
                    "hyperparameter search is not supported; leave it unset or false",
                )
            )
        return refusals

    def _launcher_refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        """What the provider's launcher cannot do here: more ranks on this node than it has
        devices (CUDA) or cores (CPU), or a trainer whose recipes run as one rank only."""
        torchrun = self._torchrun
        if torchrun is None:
            return []
        if request.method not in self.multi_rank:
            return [
                (
                    "launcher.nproc_per_node",
                    f"this trainer's {request.method.upper()} recipe runs as one rank; use a "
                    "provider whose launcher is local or ray",
                )
            ]
        if isinstance(self.launcher, RayLauncher):
            return []  # counted on the Ray node, by torchrun there
        device = self._device()
        if device.startswith("cuda"):
            import torch

            have, what = torch.cuda.device_count(), "CUDA devices"
        else:
            have, what = os.cpu_count() or 1, "CPU cores"
        if torchrun.nproc_per_node > have:
            return [
                (
                    "launcher.nproc_per_node",
                    f"the provider's launcher starts {torchrun.nproc_per_node} ranks on this "
                    f"node, which has {have} {what}; lower nproc_per_node",
                )
            ]
        return []

    async def _rows(
        self, dataset_id: str, wanted: set[DatasetPurpose], field: str
    ) -> tuple[list[dict[str, Any]], DatasetPurpose]:
        param = f"training_config.data_config.{field}"
        try:
            dataset = await self.datasets.get_dataset(dataset_id)
        except NotFoundError:
            raise NotFoundError(f"{param}: no dataset {dataset_id!r}", param=param) from None
        if dataset.purpose not in wanted:
            names = " or ".join(sorted(p.value for p in wanted))
            raise InvalidRequestError(
                f"{param}: dataset {dataset_id!r} has purpose {dataset.purpose.value}; "
                f"this job needs a {names} dataset",
                param=param,
            )
        rows: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            page = await self.datasets.iterrows(
                dataset_id, IterRowsRequest(start_index=start, limit=10000)
            )
            rows += page.data
            start = page.next_start_index
        return rows, dataset.purpose

    def _checkpoint_dir(self, request: TrainingRequest, job_uuid: str) -> Path:
        root = self.config.checkpoint_root.resolve()
        if request.checkpoint_dir is None:
            return root / job_uuid
        folder = (root / request.checkpoint_dir).resolve()
        if not folder.is_relative_to(root) or folder == root:
            raise InvalidRequestError(
                f"checkpoint_dir: {request.checkpoint_dir} must be a folder under {root}",
                param="checkpoint_dir",
            )
        return folder

    def _device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- running jobs --------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.workers) < self.config.max_concurrent_jobs and not self.stopping:
                row = self.db.one(
                    "SELECT job_uuid FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                    (JobStatus.scheduled.value,),
                )
                if row is None:
                    break
                await self._launch(row["job_uuid"])

    async def _launch(self, job_uuid: str) -> None:
        job_dir = self.jobs_dir / job_uuid
        JobFolder(job_dir).heartbeat.unlink(missing_ok=True)  # evidence of this attempt only
        attempt = len(self._attempts(job_uuid)) + 1
        name = f"{job_uuid}/{attempt}"
        command = self.worker(self._request(job_uuid), job_dir)
        resources: dict[str, Any] = {
            "device": self._device(),
            "dtype": self._spec(job_uuid).dtype,
            "torch_threads": self.config.torch_threads,
            "launcher": self.launcher.type,
            "ranks": self._spec(job_uuid).ranks,
        }
        proc: asyncio.subprocess.Process | RayJob
        if self.ray is not None:
            ray_id = submission_id(job_uuid, attempt)
            torchrun = self._torchrun
            if torchrun is not None:
                command = torchrun_command(torchrun, command, job_uuid)
            env = {ATTEMPT_ENV: name, "PYTHONPATH": self.ray.launcher.pythonpath or CHECKOUT}
            if torchrun is not None and torchrun.rdzv_endpoint is None:
                env["GLOO_SOCKET_IFNAME"] = "lo"
            if self.config.torch_threads:
                env["OMP_NUM_THREADS"] = str(self.config.torch_threads)
            try:
                await self.ray.submit(
                    ray_id,
                    self.ray.entrypoint(command, JobFolder(job_dir).log),
                    env,
                    {"llama_post_job": job_uuid, "attempt": str(attempt)},
                )
            except Exception as exc:  # the cluster, not the job: tried again
                self._note(job_uuid, f"attempt {attempt} could not be submitted to Ray: {exc}")
                await asyncio.sleep(self.config.watch_interval_seconds)
                self._wake.set()
                return
            proc = RayJob(self.ray, ray_id)
            resources["ray_submission_id"] = ray_id
        else:
            if self._torchrun is not None:
                command = torchrun_command(self._torchrun, command, job_uuid)
            with JobFolder(job_dir).log.open("ab") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                    env=_worker_env(name, self._torchrun),
                )
            resources["worker_pid"] = proc.pid
        started = self.db.execute(
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
        if not started:  # cancelled while its worker was being started
            _signal(proc, signal.SIGKILL)
            await proc.wait()
            return
        self._begin_attempt(job_uuid, resources.get("ray_submission_id"))
        self.attempt_names[job_uuid] = name
        self.steps_seen.setdefault(job_uuid, self._progress_step(job_uuid))
        self.launched_at[job_uuid] = time.time()
        self.running[job_uuid] = self._request(job_uuid)
        if trackers_of(self.running[job_uuid]) and job_uuid not in self.forwarders:
            self.forwarders[job_uuid] = self._forwarder(job_uuid)
        self.workers[job_uuid] = proc
        self.monitors[job_uuid] = asyncio.create_task(self._monitor(job_uuid, proc))

    async def _monitor(self, job_uuid: str, proc: asyncio.subprocess.Process | RayJob) -> None:
        code = await proc.wait()
        if isinstance(proc, RayJob) and proc.message and code != 0:
            self._note(job_uuid, f"Ray job {proc.submission_id} ended {proc.state}: {proc.message}")
        if self._torchrun is not None and code not in (0, EXIT_LOST):
            code = root_cause(JobFolder(self.jobs_dir / job_uuid).log, code)
        if job_uuid in self.forwarders:  # every step reaches the trackers before the status
            await self._send(job_uuid, self.forwarders[job_uuid])
        stalled = self.stalled.pop(job_uuid, None)
        overrun = self.overrun.pop(job_uuid, None)
        self._count_steps(job_uuid)
        try:
            if overrun is not None:  # the job's own limit: not retried
                self._end_attempt(job_uuid, overrun)
                self._set(job_uuid, JobStatus.failed, error=overrun)
            elif job_uuid in self.cancelling:
                self._end_attempt(job_uuid, "cancelled")
                self._set(job_uuid, JobStatus.cancelled)
            elif self.stopping:
                pass  # left in_progress: it resumes at the next start
            elif code == 0:
                self._end_attempt(job_uuid, None)
                await self._complete(job_uuid)
            else:
                reason, machine = self._ending(job_uuid, code, stalled)
                failure = failure_class(code, stalled is not None, reason)
                telemetry.WORKER_FAILURES.labels(self.provider_id, failure).inc()
                self._end_attempt(job_uuid, reason, machine)
                if machine:
                    self._retry_or_fail(job_uuid, reason)
                else:
                    self._set(job_uuid, JobStatus.failed, error=reason)
        except Exception as exc:
            log.exception("job %s could not be finished", job_uuid)
            self._set(job_uuid, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.workers.pop(job_uuid, None)
            self.monitors.pop(job_uuid, None)
            self.launched_at.pop(job_uuid, None)
            self.running.pop(job_uuid, None)
            self.attempt_names.pop(job_uuid, None)
            self.cancelling.discard(job_uuid)
            self._wake.set()
        await self._end_trackers(job_uuid)

    # -- supervision ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Kill a worker whose last heartbeat (its own clock) is older than its phase allows.
        Before its first heartbeat, the attempt's start is the evidence."""
        while True:
            await asyncio.sleep(self.config.watch_interval_seconds)
            self._forward_metrics()
            now = time.time()
            for job_uuid, proc in list(self.workers.items()):
                self._count_steps(job_uuid)
                if job_uuid in self.stalled or job_uuid in self.cancelling:
                    continue
                if job_uuid in self.overrun:
                    continue
                over = self._over_limits(job_uuid, now)
                if over is not None:
                    self.overrun[job_uuid] = over
                    self._note(job_uuid, over)
                    _signal(proc, signal.SIGKILL)
                    continue
                beat = read_heartbeat(JobFolder(self.jobs_dir / job_uuid).heartbeat)
                ours = beat is not None and (
                    beat.get("attempt") == self.attempt_names.get(job_uuid)
                    or (proc.pid is not None and beat.get("pid") == proc.pid)
                )  # a heartbeat names its attempt (the worker may be torchrun's or Ray's)
                if beat is None or not ours:
                    beat = {"time": self.launched_at.get(job_uuid, now), "phase": "loading"}
                phase = str(beat.get("phase"))
                limit = self._stall_limit(job_uuid, phase)
                quiet = now - float(beat["time"])
                if quiet <= limit:
                    continue
                where = f" at step {beat['step']}" if beat.get("step") is not None else ""
                reason = (
                    f"the worker stalled in its {phase} phase{where}: no progress for "
                    f"{quiet:.0f} s (the limit is {limit:g} s)"
                )
                self.stalled[job_uuid] = reason
                self._note(job_uuid, reason)
                _signal(proc, signal.SIGKILL)  # a stopped or wedged process ignores SIGTERM

    def _progress_step(self, job_uuid: str) -> int:
        try:
            progress = JobFolder(self.jobs_dir / job_uuid).progress.read_text()
            return JobProgress.model_validate_json(progress).step
        except (OSError, ValueError):
            return 0

    def _count_steps(self, job_uuid: str) -> None:
        """Add the steps a worker completed since the last look to the step counter; a resumed
        attempt's replay of steps already counted adds nothing."""
        step = self._progress_step(job_uuid)
        seen = self.steps_seen.get(job_uuid, step)
        if step > seen:
            telemetry.JOB_STEPS.labels(self.provider_id).inc(step - seen)
            self.steps_seen[job_uuid] = step

    def _over_limits(self, job_uuid: str, now: float) -> str | None:
        """The job's max_wall_seconds or max_cost, where its workers' running time (over all
        attempts) has passed it."""
        limits = self.running[job_uuid].supervision
        if limits.max_wall_seconds is None and limits.max_cost is None:
            return None
        ran = sum((a.get("ended_at") or now) - a["started_at"] for a in self._attempts(job_uuid))
        if limits.max_wall_seconds is not None and ran > limits.max_wall_seconds:
            return (
                f"stopped: its workers ran {ran:.0f} s, past supervision.max_wall_seconds "
                f"{limits.max_wall_seconds:g}"
            )
        price = self.config.price_per_device_hour
        if (
            limits.max_cost is not None
            and price is not None
            and ran / 3600 * price > limits.max_cost
        ):
            return (
                f"stopped: {ran:.0f} s at {price:g} an hour cost {ran / 3600 * price:.4g}, past "
                f"supervision.max_cost {limits.max_cost:g}"
            )
        return None

    # -- experiment trackers (providers/jobs/trackers.py) ----------------------------------------

    def _forwarder(self, job_uuid: str) -> Forwarder:
        return Forwarder(
            self._request(job_uuid),
            self.jobs_dir / job_uuid,
            self.roots,
            lambda line: self._note(job_uuid, line),
        )

    def _forward_metrics(self) -> None:
        """At each watchdog tick, send each running job's new metric lines to its trackers, in
        a thread; a job still sending the last tick's waits for the next."""
        for job_uuid, forwarder in self.forwarders.items():
            task = self.forwarding.get(job_uuid)
            if job_uuid in self.workers and (task is None or task.done()):
                self.forwarding[job_uuid] = asyncio.create_task(self._send(job_uuid, forwarder))

    async def _send(self, job_uuid: str, forwarder: Forwarder) -> None:
        try:
            await asyncio.to_thread(forwarder.forward)
        except Exception:  # the job's metrics file, not a tracker (those are caught per tracker)
            log.exception("job %s: its metrics could not be forwarded", job_uuid)

    async def _end_trackers(self, job_uuid: str) -> None:
        """Send a job's last metric lines and close its trackers' runs: with its status once it
        has ended, without one when the server stops (the job goes on at the next start). A job
        waiting for a retry keeps its runs open."""
        try:
            status = JobStatus(self._existing(job_uuid)["status"])
            if status not in TERMINAL and not self.stopping:
                return
            forwarder = self.forwarders.pop(job_uuid, None)
            self.forwarding.pop(job_uuid, None)
            if forwarder is None:  # ended in a later server than its last step
                if not read_runs(self.jobs_dir / job_uuid):
                    return
                forwarder = self._forwarder(job_uuid)
            await asyncio.to_thread(forwarder.close, status if status in TERMINAL else None)
        except Exception:
            log.exception("job %s: its trackers could not be closed", job_uuid)

    def _stall_limit(self, job_uuid: str, phase: str) -> float:
        limits: dict[str, float] = {str(k): v for k, v in self.config.stall_seconds.items()}
        asked = self.running[job_uuid].supervision.stall_seconds
        if isinstance(asked, dict):
            limits |= {str(k): v for k, v in asked.items()}
        elif asked is not None:
            limits = dict.fromkeys(limits, asked)
        return limits.get(phase, max(limits.values()))

    def _ending(self, job_uuid: str, code: int, stalled: str | None) -> tuple[str, bool]:
        """Why a worker ended, and whether that was the machine's fault (retried) rather than
        the job's (not)."""
        reason = self._failure(job_uuid, code)
        if stalled:
            return stalled, True
        if code == EXIT_NONFINITE:
            return reason, False
        if code == EXIT_OUT_OF_MEMORY or code == -signal.SIGKILL or "out of memory" in reason:
            lighter = self.lighter(self._spec(job_uuid))
            if lighter is None:
                return reason, False  # the retry would need as much memory as this one did
            JobFolder(self.jobs_dir / job_uuid).spec.write_text(lighter.model_dump_json(indent=2))
            return f"{reason}; the retry recomputes activations to use less", True
        if code == EXIT_LOST:  # the launcher lost it (a Ray job's driver or node)
            return f"the launcher lost the worker{_intact(reason)}", True
        if code == EXIT_CANCELLED:  # stopped by a SIGTERM nobody here sent
            return f"the worker was stopped from outside (SIGTERM){_intact(reason)}", True
        if code < 0:  # killed by a signal nobody here sent: the worker was lost
            return (
                f"the worker was lost (signal {signal.Signals(-code).name}){_intact(reason)}",
                True,
            )
        return reason, False

    def lighter(self, spec: JobSpec) -> JobSpec | None:
        """The job's spec changed to use less memory, for a retry after it ran out; None where
        the trainer has no lighter way to run it. The trainer's."""
        return None

    def _retry_or_fail(self, job_uuid: str, reason: str) -> None:
        """Schedule the job again (it resumes from its newest intact checkpoint) while its
        retries last; fail it once they are spent."""
        attempts = self._attempts(job_uuid)
        retries = sum(1 for a in attempts if a.get("machine"))
        allowed = self._request(job_uuid).supervision.max_retries
        if retries > allowed:
            tried = f"after {allowed} retr{'y' if allowed == 1 else 'ies'}" if allowed else ""
            self._note(job_uuid, f"giving up {tried or 'at once (max_retries is 0)'}: {reason}")
            self._set(
                job_uuid,
                JobStatus.failed,
                error=f"{reason} (attempt {len(attempts)}; giving up {tried or 'at once'})",
            )
            return
        self._note(
            job_uuid,
            f"attempt {len(attempts)} ended: {reason}; retrying (retry {retries} of {allowed})",
        )
        self.db.execute(
            "UPDATE jobs SET status = ? WHERE job_uuid = ? AND status = ?",
            (JobStatus.scheduled.value, job_uuid, JobStatus.in_progress.value),
        )
        telemetry.WORKER_RESTARTS.labels(self.provider_id).inc()
        self._wake.set()

    def _attempts(self, job_uuid: str) -> list[dict[str, Any]]:
        row = self.db.one("SELECT attempts FROM jobs WHERE job_uuid = ?", (job_uuid,))
        found: list[dict[str, Any]] = json.loads(row["attempts"]) if row else []
        return found

    def _begin_attempt(self, job_uuid: str, ray_submission_id: str | None = None) -> None:
        attempts = self._attempts(job_uuid)
        kept = checkpoints(Path(self._spec(job_uuid).checkpoint_dir))
        attempt = {
            "attempt": len(attempts) + 1,
            "started_at": int(time.time()),
            "resumed_from": kept[-1][1].name if kept else None,
        }
        if ray_submission_id is not None:  # a restarted server re-attaches by it
            attempt["submission_id"] = ray_submission_id
        if attempts:
            self._note(
                job_uuid,
                f"attempt {attempt['attempt']} starts"
                + (f", resuming from {attempt['resumed_from']}" if kept else ", from the start"),
            )
        self.db.execute(
            "UPDATE jobs SET attempts = ? WHERE job_uuid = ?",
            (json.dumps([*attempts, attempt]), job_uuid),
        )

    def _end_attempt(self, job_uuid: str, reason: str | None, machine: bool = False) -> None:
        attempts = self._attempts(job_uuid)
        if not attempts or attempts[-1].get("ended_at") is not None:
            return
        attempts[-1] |= {"ended_at": int(time.time()), "ended_because": reason, "machine": machine}
        self.db.execute(
            "UPDATE jobs SET attempts = ? WHERE job_uuid = ?", (json.dumps(attempts), job_uuid)
        )

    def _note(self, job_uuid: str, line: str) -> None:
        """A line of the supervisor's in the job's log, so its events tell the story."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with JobFolder(self.jobs_dir / job_uuid).log.open("a") as f:
            f.write(f"{stamp} SUPERVISOR {line}\n")

    async def _complete(self, job_uuid: str) -> None:
        """Publish the final checkpoint as `ft/<job>` to the provider serving the trained model
        (an adapter is served over its base; hot-loaded where the provider is remote)."""
        request = self._request(job_uuid)
        final = checkpoints(Path(self._spec(job_uuid).checkpoint_dir))[-1][1]
        model_id = f"ft/{job_uuid}"
        served = await self.models.get_model(request.model_id)
        if isinstance(request.tuning, LoraFinetuningConfig):
            base = served.base_model or served.id
            source: AdapterSource | HuggingFaceSource = AdapterSource(
                type="adapter", path=str(final), base_model=base
            )
        else:
            source = HuggingFaceSource(type="huggingface", path=str(final))
        registration = RegisterModelRequest(
            model_id=model_id,
            source=source,
            provider_id=served.provider_id,
            metadata={"job_uuid": job_uuid, "checkpoint": final.name},
        )
        try:
            await self.models.register_model(registration)
        except (InvalidRequestError, UpstreamError) as exc:
            # The weights are trained and kept: a provider that cannot take them now (its
            # upstream is down; a remote one serves no new full models) does not undo the job.
            if isinstance(exc, InvalidRequestError) and isinstance(source, AdapterSource):
                raise
            note = (
                f"trained, but provider {served.provider_id!r} did not serve it: {exc.message}; "
                f"register {final} with POST /v1/models"
            )
            log.warning("job %s: %s", job_uuid, note)
            self._set(job_uuid, JobStatus.completed, error=note)
            return
        self._set(job_uuid, JobStatus.completed, fine_tuned_model=model_id)

    def _failure(self, job_uuid: str, code: int) -> str:
        """The reason a worker failed, from its exit and the end of its log."""
        log_path = JobFolder(self.jobs_dir / job_uuid).log
        lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
        tail = [line for line in lines[-40:] if line.strip()]
        kept = checkpoints(Path(self._spec(job_uuid).checkpoint_dir))
        resume = f"; checkpoint {kept[-1][1].name} is intact" if kept else ""
        if code == -signal.SIGKILL:
            return (
                "the worker was killed (SIGKILL), which on Linux is most often the kernel's "
                f"out-of-memory killer: the job needs more memory than the machine had{resume}"
            )
        if code == EXIT_OUT_OF_MEMORY or any("out of memory" in line.lower() for line in tail):
            return f"the worker ran out of memory: {tail[-1] if tail else ''}{resume}"
        if any("No space left on device" in line for line in tail):
            return f"the disk is full: {tail[-1]}{resume}"
        if code == EXIT_NONFINITE:
            said = [line[line.index("non-finite") :] for line in tail if "non-finite" in line]
            return f"{said[-1] if said else 'a non-finite loss'}: the job stopped{resume}"
        reason = tail[-1] if tail else f"the worker exited with code {code}"
        return f"{reason} (the job's log has the traceback){resume}"

    def _set(
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
        if status in TERMINAL:
            self.steps_seen.pop(job_uuid, None)

    # -- reading jobs --------------------------------------------------------------------------

    def count_by_state(self) -> dict[str, int]:
        """Every state's number of jobs, for the metrics (`telemetry.JobStore`)."""
        rows = self.db.all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return dict.fromkeys((s.value for s in JobStatus), 0) | {
            r["status"]: int(r["n"]) for r in rows
        }

    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        rows = self.db.all("SELECT job_uuid FROM jobs ORDER BY seq")
        return ListPostTrainingJobsResponse(
            data=[PostTrainingJob(job_uuid=r["job_uuid"]) for r in rows]
        )

    async def get_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        row = self._existing(job_uuid)
        request = REQUEST.validate_json(row["request"])
        progress = JobFolder(self.jobs_dir / job_uuid).progress
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
            checkpoints=self._checkpoints(job_uuid, row["fine_tuned_model"]),
            progress=JobProgress.model_validate_json(progress.read_text())
            if progress.is_file()
            else JobProgress(),
            error=row["error"],
            fine_tuned_model=row["fine_tuned_model"],
            metadata=request.metadata,
            provider_id=self.provider_id,
            attempts=[JobAttempt.model_validate(a) for a in json.loads(row["attempts"])],
            estimate=TrainingEstimate.model_validate_json(figures.read_text())
            if (figures := JobFolder(self.jobs_dir / job_uuid).path / "estimate.json").is_file()
            else None,
            request=request,
            trackers=read_runs(self.jobs_dir / job_uuid),
        )

    async def cancel_job(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        status = JobStatus(self._existing(job_uuid)["status"])
        if status in TERMINAL:
            raise ConflictError(f"job {job_uuid!r} is already {status.value}", param="job_uuid")
        proc = self.workers.get(job_uuid)
        if proc is None:
            self._set(job_uuid, JobStatus.cancelled)
            await self._end_trackers(job_uuid)
            return await self.get_job_status(job_uuid)
        self.cancelling.add(job_uuid)
        _signal(proc, signal.SIGTERM)
        monitor = self.monitors.get(job_uuid)
        if monitor is not None:
            done, _ = await asyncio.wait({monitor}, timeout=self.config.cancel_grace_seconds)
            if not done:
                _signal(proc, signal.SIGKILL)
                await monitor
        return await self.get_job_status(job_uuid)

    async def get_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        row = self._existing(job_uuid)
        return PostTrainingJobArtifactsResponse(
            job_uuid=job_uuid, checkpoints=self._checkpoints(job_uuid, row["fine_tuned_model"])
        )

    async def get_job_logs(self, job_uuid: str) -> JobLogsResponse:
        self._existing(job_uuid)
        path = JobFolder(self.jobs_dir / job_uuid).log
        text = path.read_text(errors="replace") if path.is_file() else ""
        return JobLogsResponse(job_uuid=job_uuid, lines=text.splitlines()[-10000:])

    async def get_job_metrics(self, job_uuid: str) -> JobMetricsResponse:
        self._existing(job_uuid)
        rows = read_jsonl(JobFolder(self.jobs_dir / job_uuid).metrics)
        return JobMetricsResponse(
            job_uuid=job_uuid, data=[StepMetrics.model_validate(m) for m in rows]
        )

    async def stream_job_events(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        self._existing(job_uuid)
        return self._follow(job_uuid)

    async def _follow(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        folder = JobFolder(self.jobs_dir / job_uuid)
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
        """The checkpoint as a tar, written once beside it with its digest (`archives.packed`)."""
        self._existing(job_uuid)
        found = dict((p.name, p) for _, p in checkpoints(Path(self._spec(job_uuid).checkpoint_dir)))
        if checkpoint_id not in found:
            raise NotFoundError(
                f"job {job_uuid!r} has no checkpoint {checkpoint_id!r}", param="checkpoint_id"
            )
        name = f"{job_uuid}-{checkpoint_id}"
        path, sha256, size = await asyncio.to_thread(archives.packed, found[checkpoint_id], name)
        return FileContent(
            chunks=read_chunks(path),
            media_type=archives.MEDIA_TYPE,
            filename=f"{name}.tar.gz",
            size=size,
            sha256=sha256,
        )

    async def remove_checkpoint(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        """Delete a checkpoint's folder; the job's log (and so its events) says why."""
        row = self._existing(job_uuid)
        if JobStatus(row["status"]) not in TERMINAL:
            raise ConflictError(
                f"job {job_uuid!r} is {row['status']}: it resumes from its checkpoints; cancel it "
                "or let it finish first",
                param="job_uuid",
            )
        found = dict((p.name, p) for _, p in checkpoints(Path(self._spec(job_uuid).checkpoint_dir)))
        if checkpoint_id not in found:
            raise NotFoundError(
                f"job {job_uuid!r} has no checkpoint {checkpoint_id!r}", param="checkpoint_id"
            )
        await asyncio.to_thread(shutil.rmtree, found[checkpoint_id])
        archives.forget(found[checkpoint_id])
        with JobFolder(self.jobs_dir / job_uuid).log.open("a") as log_file:
            log_file.write(f"checkpoint {checkpoint_id} removed: {reason}\n")

    # -- helpers -------------------------------------------------------------------------------

    def _checkpoints(self, job_uuid: str, final_model: str | None) -> list[Checkpoint]:
        folder = Path(self._spec(job_uuid).checkpoint_dir)
        found = checkpoints(folder)
        out = []
        for i, (step, path) in enumerate(found):
            meta = json.loads((path / "checkpoint.json").read_text())
            resumable = any((path / n).is_file() for n in ("state.pt", "recipe_state.pt"))
            out.append(
                Checkpoint(
                    identifier=f"{job_uuid}/{path.name}",
                    checkpoint_id=path.name,
                    type="training" if resumable else "sampler",
                    size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                    created_at=meta["created_at"],
                    epoch=meta["epoch"],
                    step=step,
                    post_training_job_id=job_uuid,
                    path=str(path),
                    training_metrics=TrainingMetrics(
                        epoch=meta["epoch"],
                        train_loss=meta["train_loss"],
                        validation_loss=meta["validation_loss"],
                        perplexity=None
                        if "reward_margin" in meta  # a DPO loss is no cross-entropy
                        else _perplexity(meta["validation_loss"] or meta["train_loss"]),
                    ),
                    model_id=final_model if i == len(found) - 1 and meta.get("final") else None,
                )
            )
        return out

    def _spec(self, job_uuid: str) -> JobSpec:
        return JobFolder(self.jobs_dir / job_uuid).read_spec()

    def _request(self, job_uuid: str) -> TrainingRequest:
        return REQUEST.validate_json(self._existing(job_uuid)["request"])

    def _row(self, job_uuid: str) -> Any:
        return self.db.one("SELECT * FROM jobs WHERE job_uuid = ?", (job_uuid,))

    def _existing(self, job_uuid: str) -> Any:
        check_id(job_uuid, JOB_ID, "job")
        row = self._row(job_uuid)
        if row is None:
            raise NotFoundError(f"no job {job_uuid!r}", param="job_uuid")
        return row


def failure_class(code: int, stalled: bool, reason: str) -> str:
    """A failed attempt's reason as one of a few words, the metrics' label."""
    if stalled:
        return "stalled"
    if code == EXIT_NONFINITE:
        return "nonfinite"
    if code == EXIT_OUT_OF_MEMORY or code == -signal.SIGKILL or "out of memory" in reason:
        return "out_of_memory"
    if "the disk is full" in reason:
        return "disk_full"
    if code < 0 or code == EXIT_CANCELLED:
        return "lost"
    return "error"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _intact(reason: str) -> str:
    """The "; checkpoint X is intact" a failure reason ends with, if it does."""
    at = reason.find("; checkpoint ")
    return reason[at:] if at >= 0 else ""


def _perplexity(loss: float | None) -> float | None:
    import math

    return math.exp(min(loss, 50.0)) if loss is not None else None


def torchrun_command(launcher: TorchrunLauncher, command: list[str], job_uuid: str) -> list[str]:
    """The worker's `python -m recipe JOB_DIR` run as torchrun's ranks. A rank that fails ends
    them all (no restarts: the supervisor decides on retries)."""
    python, flag, module, *args = command
    assert flag == "-m", command
    where = (
        ["--standalone"]
        if launcher.rdzv_endpoint is None
        else [
            *("--rdzv-backend", "c10d", "--rdzv-endpoint", launcher.rdzv_endpoint),
            *("--rdzv-id", job_uuid),
        ]
    )
    return [
        python,
        "-m",
        "torch.distributed.run",
        *where,
        "--nnodes",
        str(launcher.nnodes),
        "--nproc-per-node",
        str(launcher.nproc_per_node),
        "--max-restarts",
        "0",
        "-m",
        module,
        *args,
    ]


def _worker_env(name: str, torchrun: TorchrunLauncher | None) -> dict[str, str]:
    env = {**os.environ, ATTEMPT_ENV: name}
    if torchrun is not None and torchrun.rdzv_endpoint is None:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: the ranks talk over loopback
    return env


ROOT_CAUSE = re.compile(r"exitcode\s*:\s*(-?\d+)")


def root_cause(log_path: Path, code: int) -> int:
    """torchrun's exit is 1 whatever a rank died of; the rank's own code is in the report it
    writes at the end of the log ("Root Cause ... exitcode  : -9")."""
    try:
        text = log_path.read_text(errors="replace")[-20000:]
    except OSError:
        return code
    at = text.rfind("Root Cause")
    found = ROOT_CAUSE.search(text, at) if at >= 0 else None
    return int(found.group(1)) if found else code


def _signal(proc: asyncio.subprocess.Process | RayJob, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _die_with_parent() -> None:
    """In the worker, before exec: be killed when the server dies, however it dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def check_prompt_field(
    data_format: str, train: list[dict[str, Any]], validation: list[dict[str, Any]] | None
) -> None:
    """A preference job told its `data_format` reads that prompt field from every row:
    `messages` for dialog, `prompt` for instruct (Llama Stack's clients always send one)."""
    needed = "messages" if data_format == "dialog" else "prompt"
    for name, rows in (("dataset_id", train), ("validation_dataset_id", validation or [])):
        for number, row in enumerate(rows, start=1):
            if row.get(needed) is None:
                raise InvalidRequestError(
                    f"training_config.data_config.data_format: {data_format} reads each row's "
                    f"`{needed}`; row {number} of {name} has none (leave data_format unset to "
                    "read whichever a row has)",
                    param="training_config.data_config.data_format",
                )
