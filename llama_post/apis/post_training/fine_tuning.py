"""OpenAI's fine-tuning jobs API, over the native PostTraining methods.

`OpenAIFineTuning` is a mixin: a PostTraining provider inherits it and gets
`/v1/fine_tuning/jobs` (create, list, retrieve, cancel, events, checkpoints) as a translation of
its own `supervised_fine_tune`, `preference_optimize`, `get_job_status`, `get_job_metrics`,
`get_job_artifacts` and `cancel_job`, plus the Datasets API it was given. Nothing is stored
twice: a job's training file is the file its dataset was registered from, its hyperparameters
are its native request's, and a suffix is part of its id (`ftjob-<suffix>-<hex>`), so the
served model `ft/<job>` carries it.

Files are checked while the create call runs (a bad row is a 400 naming `training_file` and the
row), so a job is never seen `validating_files`: it is `queued` when created.

Errors keep OpenAI's envelope and name OpenAI's fields (`training_file`,
`method.dpo.hyperparameters.beta`). A state conflict (cancelling a finished job) is a 400:
the SDK retries a 409.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_post.apis.datasets import (
    Dataset,
    DatasetPurpose,
    Datasets,
    RegisterDatasetRequest,
)
from llama_post.apis.datasets.models import FileDataSource
from llama_post.apis.post_training.graders import (
    Grader,
    GraderRoutes,
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
)
from llama_post.apis.post_training.methods import method_of, openai_method
from llama_post.apis.post_training.models import (
    BASE_LR,
    AlgorithmConfig,
    Checkpoint,
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
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
    TrainingRequest,
    WandbTracker,
    lora_without_type,
)
from llama_post.errors import (
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    NotSupportedError,
)
from llama_post.schema import FileContent, StrictModel

if TYPE_CHECKING:
    from llama_post.apis.post_training.api import PostTrainingJobs

Auto = Literal["auto"]
# What "auto" means here (OpenAI picks by dataset size; these suit small datasets on a CPU).
AUTO_EPOCHS = 3
AUTO_BATCH_SIZE = 4
AUTO_BETA = 0.1

STATUS = {
    JobStatus.scheduled: "queued",
    JobStatus.in_progress: "running",
    JobStatus.completed: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.cancelled: "cancelled",
    JobStatus.unknown: "running",  # its trainer is out of reach; OpenAI has no such state
}
FineTuningStatus = Literal[
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled"
]


# -- requests ----------------------------------------------------------------------------------


# OpenAI answers an out-of-range hyperparameter with a 400 naming it; so do we (not pydantic's
# 422), and the spec states the same ranges.
LIMITS = {
    "batch_size": (1, 1024),
    "n_epochs": (1, 100),
    "learning_rate_multiplier": (1e-3, 100.0),
    "beta": (1e-3, 100.0),
}


def _auto_or(name: str, kind: str) -> dict[str, Any]:
    low, high = LIMITS[name]
    number = {"type": kind, "minimum": low, "maximum": high}
    return {"anyOf": [number, {"const": "auto", "type": "string"}]}


class Hyperparameters(StrictModel):
    batch_size: int | Auto = Field(
        "auto",
        description="Examples per step.",
        json_schema_extra=_auto_or("batch_size", "integer"),
    )
    learning_rate_multiplier: float | Auto = Field(
        "auto",
        description="Times the base rate: 2e-4 for LoRA, 2e-5 for full fine-tuning.",
        json_schema_extra=_auto_or("learning_rate_multiplier", "number"),
    )
    n_epochs: int | Auto = Field(
        "auto",
        description="Passes over the training file.",
        json_schema_extra=_auto_or("n_epochs", "integer"),
    )


class DpoHyperparameters(Hyperparameters):
    beta: float | Auto = Field(
        "auto",
        description="How far the policy may move; 0.1 if auto.",
        json_schema_extra=_auto_or("beta", "number"),
    )


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters. Its exploration and evaluation knobs have no
    counterpart in the GRPO recipe and are refused unless `auto` (the native
    `POST /v1/post-training/reinforce` exposes the recipe's own)."""

    compute_multiplier: float | Auto | None = Field(None, description="Only auto or unset.")
    eval_interval: int | Auto | None = Field(None, description="Only auto or unset.")
    eval_samples: int | Auto | None = Field(None, description="Only auto or unset.")
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = Field(
        None, description="Only default or unset: the models served here do not reason."
    )


class SupervisedMethod(StrictModel):
    hyperparameters: Hyperparameters = Hyperparameters()


class DpoMethod(StrictModel):
    hyperparameters: DpoHyperparameters = DpoHyperparameters()


class ReinforcementMethod(StrictModel):
    """Reinforcement fine-tuning: the GRPO recipe, its answers scored by `grader`."""

    grader: Grader
    hyperparameters: ReinforcementHyperparameters = ReinforcementHyperparameters()


METHODS = ("supervised", "dpo", "reinforcement")


class FineTuningMethod(StrictModel):
    """`type` names the method; only that method's settings may be given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": kind}}},
                    "then": {
                        "properties": {
                            other: {"type": "null"} for other in METHODS if other != kind
                        }
                    },
                }
                for kind in METHODS
            ]
        },
    )

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbSettings(StrictModel):
    project: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=128, description="Unset: the job's id.")
    entity: str | None = Field(None, max_length=128)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=20
    )


class WandbIntegration(StrictModel):
    """OpenAI's Weights & Biases integration, served by the job's W&B tracker in its default
    offline mode: the run is written in the job's folder, for `wandb sync` (the native
    `logger_config.trackers` can send it online)."""

    type: Literal["wandb"]
    wandb: WandbSettings


class CreateFineTuningJobRequest(StrictModel):
    """OpenAI's job request. `algorithm_config` (sent with the SDK's `extra_body`) is
    llama-post's own LoRA or full fine-tuning config; LoRA with its defaults if unset."""

    # The deprecated top-level `hyperparameters` serve a supervised job whose method gives none.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {
                "required": ["hyperparameters"],
                "properties": {"hyperparameters": {"not": {"type": "null"}}},
            },
            "then": {
                "properties": {
                    "method": {
                        "anyOf": [
                            {"type": "null"},
                            {
                                "properties": {
                                    "type": {"const": "supervised"},
                                    "supervised": {"type": "null"},
                                }
                            },
                        ]
                    }
                }
            },
        },
    )

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$",
        description="Up to 40 letters, digits, `-`, `_`; made part of the job and model ids.",
    )
    seed: int | None = None
    method: FineTuningMethod | None = None
    hyperparameters: Hyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of `method`; taken for supervised jobs."
    )
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    integrations: list[WandbIntegration] | None = Field(
        None, max_length=8, description="Weights & Biases runs that get the job's metrics."
    )
    algorithm_config: AlgorithmConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _lora_by_default(cls, data: Any) -> Any:
        return lora_without_type(data, "algorithm_config")


class PageRequest(StrictModel):
    after: str | None = Field(None, description="The last id of the previous page.")
    limit: int = Field(20, ge=1, le=100)


class ListFineTuningJobsRequest(PageRequest):
    metadata: dict[str, str] | None = Field(
        None, description="Only jobs with these labels; sent as `metadata[key]=value`."
    )

    @model_validator(mode="before")
    @classmethod
    def _bracketed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        labels = {k[9:-1]: v for k, v in data.items() if k.startswith("metadata[") and k[-1] == "]"}
        if not labels:
            return data
        rest = {k: v for k, v in data.items() if not (k.startswith("metadata[") and k[-1] == "]")}
        return {**rest, "metadata": labels}


# -- responses ---------------------------------------------------------------------------------


class FineTuningError(BaseModel):
    code: str
    message: str
    param: str | None = None


class ResolvedHyperparameters(BaseModel):
    batch_size: int
    learning_rate_multiplier: float
    n_epochs: int
    beta: float | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    hyperparameters: ResolvedHyperparameters
    method: FineTuningMethod
    model: str
    organization_id: str = "local"
    result_files: list[str] = []
    seed: int
    status: FineTuningStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[WandbIntegration] | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# -- the translation ---------------------------------------------------------------------------


class OpenAIFineTuning:
    """The PostTraining API the stack serves: the jobs of whatever serves post-training (one
    provider, or the router over several), and OpenAI's fine-tuning jobs written over them, so
    they work the same for every provider."""

    def __init__(
        self, jobs: PostTrainingJobs, datasets: Datasets, graders: GraderRoutes | None = None
    ) -> None:
        self.jobs = jobs
        self.datasets = datasets
        self.graders = graders  # the grader routes (`distribution/graders.py`)

    # -- graders: served by the stack, not a provider -------------------------------------------

    async def run_grader(self, request: GraderRunRequest) -> GraderRunResponse:
        return await self._graders().run_grader(request)

    async def validate_grader(self, request: GraderValidateRequest) -> GraderValidateResponse:
        return await self._graders().validate_grader(request)

    def _graders(self) -> GraderRoutes:
        if self.graders is None:
            raise NotSupportedError("graders are not served by this stack")
        return self.graders

    # -- the native methods, as the providers serve them ----------------------------------------

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        return await self.jobs.supervised_fine_tune(request)

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        return await self.jobs.preference_optimize(request)

    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob:
        return await self.jobs.reinforce(request)

    async def preflight(self, request: SupervisedFineTuneRequest) -> PreflightResponse:
        return await self.jobs.preflight(request)

    async def estimate(self, request: SupervisedFineTuneRequest) -> TrainingEstimate:
        return await self.jobs.estimate(request)

    async def estimate_preference(self, request: PreferenceOptimizeRequest) -> TrainingEstimate:
        return await self.jobs.estimate_preference(request)

    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        return await self.jobs.list_jobs()

    async def get_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        return await self.jobs.get_job_status(job_uuid)

    async def cancel_job(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        return await self.jobs.cancel_job(job_uuid)

    async def get_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        return await self.jobs.get_job_artifacts(job_uuid)

    async def get_job_logs(self, job_uuid: str) -> JobLogsResponse:
        return await self.jobs.get_job_logs(job_uuid)

    async def get_job_metrics(self, job_uuid: str) -> JobMetricsResponse:
        return await self.jobs.get_job_metrics(job_uuid)

    async def stream_job_events(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        return await self.jobs.stream_job_events(job_uuid)

    async def checkpoint_archive(self, job_uuid: str, checkpoint_id: str) -> FileContent:
        return await self.jobs.checkpoint_archive(job_uuid, checkpoint_id)

    async def remove_checkpoint(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        await self.jobs.remove_checkpoint(job_uuid, checkpoint_id, reason)

    # -- create ------------------------------------------------------------------------------

    async def create_fine_tuning_job(self, request: CreateFineTuningJobRequest) -> FineTuningJob:
        method = request.method or FineTuningMethod(type="supervised")
        params = _hyperparameters(request, method)
        job_uuid = "-".join(filter(None, ["ftjob", request.suffix, secrets.token_hex(6)]))
        kinds = list(openai_method(method.type).purposes)
        made: list[str] = []
        try:
            train = await self._dataset_of(
                request.training_file, "training_file", kinds, f"{job_uuid}-train", made
            )
            validation = None
            if request.validation_file:
                validation = await self._dataset_of(
                    request.validation_file,
                    "validation_file",
                    [train.purpose],
                    f"{job_uuid}-validation",
                    made,
                )
            native = _native_request(request, method, job_uuid, params, train, validation)
            await method_of(native).create(self, native)
        except InvalidRequestError as exc:
            await self._forget(made)
            raise type(exc)(
                exc.message, param=_openai_param(exc.param, method.type), details=exc.details
            ) from None
        except NotFoundError as exc:  # OpenAI answers a job naming no such model with a 400
            await self._forget(made)
            raise InvalidRequestError(
                exc.message, param=_openai_param(exc.param, method.type), details=exc.details
            ) from None
        except BaseException:
            await self._forget(made)
            raise
        return await self.retrieve_fine_tuning_job(job_uuid)

    async def _dataset_of(
        self,
        file_id: str,
        field: str,
        kinds: list[DatasetPurpose],
        dataset_id: str,
        made: list[str],
    ) -> Dataset:
        """Register an uploaded file as a dataset of the first purpose its rows fit."""
        first: InvalidRequestError | None = None
        for kind in kinds:
            try:
                dataset = await self.datasets.register_dataset(
                    RegisterDatasetRequest(
                        purpose=kind,
                        source=FileDataSource(type="file", file_id=file_id),
                        dataset_id=dataset_id,
                        metadata={"fine_tuning_job": field},
                    )
                )
            except NotFoundError:  # OpenAI's answer to an unknown training file: a 400
                raise InvalidRequestError(f"{field}: no file {file_id!r}", param=field) from None
            except InvalidRequestError as exc:
                first = first or exc
                continue
            made.append(dataset.identifier)
            return dataset
        assert first is not None
        raise InvalidRequestError(
            f"{field}: {file_id} cannot be used: {first.message}",
            param=field,
            details=first.details,
        )

    async def _forget(self, dataset_ids: list[str]) -> None:
        for dataset_id in dataset_ids:
            with contextlib.suppress(NotFoundError):
                await self.datasets.unregister_dataset(dataset_id)

    # -- read --------------------------------------------------------------------------------

    async def list_fine_tuning_jobs(self, request: ListFineTuningJobsRequest) -> FineTuningJobList:
        ids = [j.job_uuid for j in (await self.list_jobs()).data][::-1]  # newest first
        if request.metadata:
            wanted = request.metadata.items()
            ids = [i for i in ids if wanted <= (await self.get_job_status(i)).metadata.items()]
        if request.after is not None:
            if request.after not in ids:
                raise NotFoundError(f"after: no job {request.after!r}", param="after")
            ids = ids[ids.index(request.after) + 1 :]
        page = ids[: request.limit]
        return FineTuningJobList(
            data=[await self.retrieve_fine_tuning_job(i) for i in page],
            has_more=len(ids) > len(page),
        )

    async def retrieve_fine_tuning_job(self, fine_tuning_job_id: str) -> FineTuningJob:
        status = await self._status(fine_tuning_job_id)
        request = _request_of(status)
        metrics = (await self.get_job_metrics(fine_tuning_job_id)).data
        data = request.training_config.data
        params = _resolved(request)
        return FineTuningJob(
            id=fine_tuning_job_id,
            created_at=status.scheduled_at or 0,
            error=FineTuningError(code="job_failed", message=status.error)
            if status.status == JobStatus.failed and status.error
            else None,
            fine_tuned_model=status.fine_tuned_model,
            finished_at=status.completed_at,
            estimated_finish=_estimated_finish(status),
            hyperparameters=params,
            method=_method(request, params),
            model=status.model,
            seed=request.training_config.seed,
            # a job waiting for its retry (it has run before) is still running to its user
            status="running"
            if status.status == JobStatus.scheduled and status.attempts
            else STATUS[status.status],
            trained_tokens=sum(m.tokens or 0 for m in metrics) if metrics else None,
            training_file=await self._file_of(data.dataset_id),
            validation_file=await self._file_of(data.validation_dataset_id)
            if data.validation_dataset_id
            else None,
            metadata=status.metadata or None,
            integrations=_integrations(request),
        )

    async def cancel_fine_tuning_job(self, fine_tuning_job_id: str) -> FineTuningJob:
        await self._status(fine_tuning_job_id)
        try:
            await self.cancel_job(fine_tuning_job_id)
        except ConflictError as exc:
            raise InvalidRequestError(exc.message, param="fine_tuning_job_id") from None
        return await self.retrieve_fine_tuning_job(fine_tuning_job_id)

    async def list_fine_tuning_events(
        self, fine_tuning_job_id: str, request: PageRequest
    ) -> FineTuningJobEventList:
        status = await self._status(fine_tuning_job_id)
        data = _request_of(status).training_config.data
        metrics = (await self.get_job_metrics(fine_tuning_job_id)).data
        events = _events(status, metrics, await self._file_of(data.dataset_id))
        page, has_more = _page(events[::-1], request, lambda e: e.id)
        return FineTuningJobEventList(data=page, has_more=has_more)

    async def list_fine_tuning_checkpoints(
        self, fine_tuning_job_id: str, request: PageRequest
    ) -> FineTuningJobCheckpointList:
        artifacts = await self.get_job_artifacts((await self._status(fine_tuning_job_id)).job_uuid)
        found = [_checkpoint(c) for c in artifacts.checkpoints][::-1]  # newest first
        page, has_more = _page(found, request, lambda c: c.id)
        return FineTuningJobCheckpointList(
            data=page,
            has_more=has_more,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )

    async def _status(self, job_id: str) -> PostTrainingJobStatusResponse:
        try:
            return await self.get_job_status(job_id)
        except NotFoundError:
            raise NotFoundError(
                f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id"
            ) from None

    async def _file_of(self, dataset_id: str) -> str:
        """The file a dataset was registered from; a dataset made otherwise stands for itself."""
        try:
            dataset = await self.datasets.get_dataset(dataset_id)
        except NotFoundError:
            return dataset_id
        return dataset.source.file_id or dataset_id


def _request_of(status: PostTrainingJobStatusResponse) -> TrainingRequest:
    if status.request is None:  # every provider fills it in; one that does not is a bug
        raise LlamaPostError(f"job {status.job_uuid!r}: its provider did not say its request")
    return status.request


def _hyperparameters(
    request: CreateFineTuningJobRequest, method: FineTuningMethod
) -> DpoHyperparameters:
    """The method's hyperparameters (or the deprecated top-level ones), checked by name."""
    for other in METHODS:
        if other != method.type and getattr(method, other) is not None:
            raise InvalidRequestError(
                f"method.{other}: given for a {method.type} job; use method.{method.type}",
                param=f"method.{other}",
            )
    if method.type == "reinforcement":
        where = "method.reinforcement.hyperparameters"
        if method.reinforcement is None:
            raise InvalidRequestError(
                "method.reinforcement: a reinforcement job needs its grader, e.g. "
                '{"grader": {"type": "string_check", "name": "exact", "input": '
                '"{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}}',
                param="method.reinforcement",
            )
        if request.hyperparameters is not None:
            raise InvalidRequestError(
                f"hyperparameters: set them in {where} for a reinforcement job",
                param="hyperparameters",
            )
        rft = method.reinforcement.hyperparameters
        for name in ("compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort"):
            if getattr(rft, name) not in (None, "auto", "default"):
                raise InvalidRequestError(
                    f"{where}.{name}: the GRPO recipe has no such knob; leave it auto (the "
                    "native POST /v1/post-training/reinforce sets group_size, temperature, ...)",
                    param=f"{where}.{name}",
                )
        given: Hyperparameters = Hyperparameters.model_validate(
            rft.model_dump(include=set(Hyperparameters.model_fields))
        )
    elif method.type == "dpo":
        where = "method.dpo.hyperparameters"
        given = (method.dpo or DpoMethod()).hyperparameters
        if request.hyperparameters is not None:
            raise InvalidRequestError(
                f"hyperparameters: set them in {where} for a dpo job", param="hyperparameters"
            )
    else:
        where = "method.supervised.hyperparameters"
        given = (method.supervised or SupervisedMethod()).hyperparameters
        if request.hyperparameters is not None:
            if method.supervised is not None:
                raise InvalidRequestError(
                    f"hyperparameters: give them once, in {where}", param="hyperparameters"
                )
            given, where = request.hyperparameters, "hyperparameters"
    params = DpoHyperparameters.model_validate(given.model_dump())
    for name, (low, high) in LIMITS.items():
        value = getattr(params, name)
        if value != "auto" and not low <= value <= high:
            raise InvalidRequestError(
                f"{where}.{name}: {value} is out of range [{low}, {high}]",
                param=f"{where}.{name}",
            )
    return params


def _native_request(
    request: CreateFineTuningJobRequest,
    method: FineTuningMethod,
    job_uuid: str,
    params: DpoHyperparameters,
    train: Dataset,
    validation: Dataset | None,
) -> TrainingRequest:
    tuning = request.algorithm_config or LoraFinetuningConfig()
    batch_size = AUTO_BATCH_SIZE if params.batch_size == "auto" else params.batch_size
    multiplier = (
        1.0 if params.learning_rate_multiplier == "auto" else params.learning_rate_multiplier
    )
    steps_per_epoch = max(1, math.ceil(train.row_count / batch_size))
    data: dict[str, Any] = {
        "dataset_id": train.identifier,
        "batch_size": batch_size,
        "validation_dataset_id": validation.identifier if validation else None,
    }
    if method.type == "supervised":
        data["data_format"] = "dialog" if train.purpose == DatasetPurpose.dialog else "instruct"
    training = {
        "n_epochs": AUTO_EPOCHS if params.n_epochs == "auto" else params.n_epochs,
        "data_config": data,
        "optimizer_config": {"lr": BASE_LR[tuning.type] * multiplier},
        "save_every": steps_per_epoch,  # a checkpoint per epoch, as OpenAI gives
        **({"seed": request.seed} if request.seed is not None else {}),
    }
    common: dict[str, Any] = {
        "job_uuid": job_uuid,
        "training_config": training,
        "metadata": request.metadata or {},
        "logger_config": {
            "trackers": [
                {"type": "wandb", **i.wandb.model_dump(exclude_none=True)}
                for i in request.integrations or []
            ]
        },
    }
    if method.reinforcement is not None:
        return ReinforceRequest.model_validate(
            {
                **common,
                "model": request.model,
                "grader": method.reinforcement.grader.model_dump(by_alias=True),
                "finetuning_config": tuning.model_dump(),
            }
        )
    if method.type == "dpo":
        beta = AUTO_BETA if params.beta == "auto" else params.beta
        return PreferenceOptimizeRequest.model_validate(
            {
                **common,
                "finetuned_model": request.model,
                "algorithm_config": {"beta": beta},
                "finetuning_config": tuning.model_dump(),
            }
        )
    return SupervisedFineTuneRequest.model_validate(
        {**common, "model": request.model, "algorithm_config": tuning.model_dump()}
    )


def _integrations(request: TrainingRequest) -> list[WandbIntegration] | None:
    """The job's W&B trackers, in OpenAI's shape."""
    found = [
        WandbIntegration(
            type="wandb",
            wandb=WandbSettings(
                project=t.project, name=t.name, entity=t.entity, tags=t.tags or None
            ),
        )
        for t in (request.logger_config.trackers if request.logger_config else [])
        if isinstance(t, WandbTracker)
    ]
    return found or None


def _openai_param(native: str | None, method: str) -> str | None:
    """A native field's name as the OpenAI request calls it."""
    if native is None:
        return None
    # the job's trackers are its integrations, in order; `type` and `mode` are the integration's
    tracker = re.match(r"logger_config\.trackers(\[\d+\])(?:\.(\w+))?$", native)
    if tracker is not None:
        index, name = tracker.groups()
        inner = f".wandb.{name}" if name in WandbSettings.model_fields else ".type"
        return f"integrations{index}{inner}"
    hyper = f"method.{method}.hyperparameters"
    for prefix, name in (
        ("grader", f"method.{method}.grader"),
        ("finetuned_model", "model"),
        ("finetuning_config", "algorithm_config"),
        ("training_config.data_config.dataset_id", "training_file"),
        ("training_config.data_config.validation_dataset_id", "validation_file"),
        ("training_config.data_config.batch_size", f"{hyper}.batch_size"),
        ("training_config.n_epochs", f"{hyper}.n_epochs"),
        ("training_config.optimizer_config.lr", f"{hyper}.learning_rate_multiplier"),
        ("algorithm_config.beta", f"{hyper}.beta"),
    ):
        if native.startswith(prefix):
            return name + native[len(prefix) :]
    return native


def _resolved(request: TrainingRequest) -> ResolvedHyperparameters:
    training = request.training_config
    return ResolvedHyperparameters(
        batch_size=training.data.batch_size,
        learning_rate_multiplier=round(training.optimizer.lr / BASE_LR[request.tuning.type], 9),
        n_epochs=training.n_epochs,
        beta=request.algorithm_config.beta
        if isinstance(request, PreferenceOptimizeRequest)
        else None,
    )


def _method(request: TrainingRequest, params: ResolvedHyperparameters) -> FineTuningMethod:
    if isinstance(request, ReinforceRequest):
        return FineTuningMethod(
            type="reinforcement",
            reinforcement=ReinforcementMethod(
                grader=request.grading,
                hyperparameters=ReinforcementHyperparameters(**params.model_dump(exclude={"beta"})),
            ),
        )
    if request.method == "dpo":
        return FineTuningMethod(
            type="dpo",
            dpo=DpoMethod(hyperparameters=DpoHyperparameters(**params.model_dump())),
        )
    return FineTuningMethod(
        type="supervised",
        supervised=SupervisedMethod(
            hyperparameters=Hyperparameters(**params.model_dump(exclude={"beta"}))
        ),
    )


def _estimated_finish(status: PostTrainingJobStatusResponse) -> int | None:
    progress = status.progress
    if status.status != JobStatus.in_progress or not status.started_at or progress.step < 1:
        return None
    elapsed = time.time() - status.started_at
    return int(status.started_at + elapsed * progress.total_steps / progress.step)


def _events(
    status: PostTrainingJobStatusResponse, metrics: list[StepMetrics], training_file: str
) -> list[FineTuningJobEvent]:
    """The job's history, oldest first: creation, start, each step, each checkpoint, its end."""
    job = status.job_uuid
    created = status.scheduled_at or 0
    events = [
        FineTuningJobEvent(
            id=f"ftevent-{job}-created",
            created_at=created,
            level="info",
            message=f"Created fine-tuning job: {job}",
        ),
        FineTuningJobEvent(
            id=f"ftevent-{job}-validated",
            created_at=created,
            level="info",
            message=f"Validated training file: {training_file}",
        ),
    ]
    if status.started_at:
        events.append(
            FineTuningJobEvent(
                id=f"ftevent-{job}-started",
                created_at=status.started_at,
                level="info",
                message="Fine-tuning job started",
            )
        )
    total = status.progress.total_steps
    timed: list[tuple[float, FineTuningJobEvent]] = []
    for m in metrics:
        data = {
            "step": m.step,
            "train_loss": m.loss,
            "learning_rate": m.lr,
            "total_steps": total,
            "tokens_per_second": m.tokens_per_second,
        }
        if m.validation_loss is not None:
            data["valid_loss"] = m.validation_loss
        if m.reward_mean is not None:  # reinforcement: the grader's mean score
            data["train_mean_reward"] = m.reward_mean
        if m.validation_reward is not None:
            data["valid_mean_reward"] = m.validation_reward
        loss = f"{m.loss:.4f}" if m.loss is not None else "n/a"
        timed.append(
            (
                m.timestamp,
                FineTuningJobEvent(
                    id=f"ftevent-{job}-step-{m.step}",
                    created_at=int(m.timestamp),
                    level="info",
                    message=f"Step {m.step}/{total}: training loss={loss}",
                    type="metrics",
                    data=data,
                ),
            )
        )
    for c in status.checkpoints:
        timed.append(
            (
                c.created_at + 0.5,  # after the step that made it
                FineTuningJobEvent(
                    id=f"ftevent-{job}-checkpoint-{c.step}",
                    created_at=c.created_at,
                    level="info",
                    message=f"Checkpoint created at step {c.step}",
                ),
            )
        )
    for before, attempt in zip(status.attempts, status.attempts[1:], strict=False):
        where = f", resuming from {attempt.resumed_from}" if attempt.resumed_from else ""
        timed.append(
            (
                attempt.started_at,
                FineTuningJobEvent(
                    id=f"ftevent-{job}-attempt-{attempt.attempt}",
                    created_at=attempt.started_at,
                    level="warn",
                    message=f"Attempt {attempt.attempt} started{where}; attempt "
                    f"{before.attempt} ended: {before.ended_because}",
                ),
            )
        )
    events += [e for _, e in sorted(timed, key=lambda pair: pair[0])]
    if status.status in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled):
        end = status.completed_at or created
        if status.status == JobStatus.completed:
            events.append(
                FineTuningJobEvent(
                    id=f"ftevent-{job}-model",
                    created_at=end,
                    level="info",
                    message=f"New fine-tuned model created: {status.fine_tuned_model}",
                )
            )
        level: Literal["info", "error"] = "error" if status.status == JobStatus.failed else "info"
        message = {
            JobStatus.completed: "The job has successfully completed",
            JobStatus.cancelled: "The job was cancelled",
            JobStatus.failed: f"The job failed: {status.error}",
        }[status.status]
        events.append(
            FineTuningJobEvent(
                id=f"ftevent-{job}-end", created_at=end, level=level, message=message
            )
        )
    return events


def _checkpoint(c: Checkpoint) -> FineTuningJobCheckpoint:
    metrics = c.training_metrics
    return FineTuningJobCheckpoint(
        id=f"ftckpt-{c.post_training_job_id}-{c.step}",
        created_at=c.created_at,
        fine_tuned_model_checkpoint=c.model_id or c.identifier,
        fine_tuning_job_id=c.post_training_job_id,
        metrics=CheckpointMetrics(
            step=c.step,
            train_loss=metrics.train_loss if metrics else None,
            valid_loss=metrics.validation_loss if metrics else None,
            full_valid_loss=metrics.validation_loss if metrics else None,
        ),
        step_number=c.step,
    )


T = TypeVar("T")


def _page(items: list[T], request: PageRequest, key: Callable[[T], str]) -> tuple[list[T], bool]:
    if request.after is not None:
        ids = [key(i) for i in items]
        if request.after not in ids:
            raise NotFoundError(f"after: no item {request.after!r}", param="after")
        items = items[ids.index(request.after) + 1 :]
    page = items[: request.limit]
    return page, len(items) > len(page)
