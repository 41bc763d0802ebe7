"""OpenAI's fine-tuning jobs API, over the native PostTraining methods.

`OpenAIFineTuning` is what the stack installs over whatever serves post-training (one provider, or
the router), as it installs the other compatibility families: it serves
`/v1/fine_tuning/jobs` (create, list, retrieve, cancel, events, checkpoints; the schemas are in
`llama_post.apis.post_training.openai_fine_tuning`) as a translation of its
`supervised_fine_tune`, `preference_optimize`, `get_job_status`, `get_job_metrics`,
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
from typing import Any

from llama_post.apis.datasets import (
    Dataset,
    DatasetPurpose,
    Datasets,
    RegisterDatasetRequest,
)
from llama_post.apis.datasets.models import FileDataSource
from llama_post.apis.post_training.api import PostTrainingJobs
from llama_post.apis.post_training.configs import (
    BASE_LR,
    LoraFinetuningConfig,
    WandbTracker,
)
from llama_post.apis.post_training.graders import (
    GraderRoutes,
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
)
from llama_post.apis.post_training.jobs import (
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
    JobStatus,
    ListPostTrainingJobsResponse,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PreflightResponse,
    TrainingEstimate,
)
from llama_post.apis.post_training.methods import DPO, GRPO, SFT, method_of, openai_method
from llama_post.apis.post_training.models import (
    PreferenceOptimizeRequest,
    ReinforceRequest,
    SupervisedFineTuneRequest,
    TrainingRequest,
)
from llama_post.apis.post_training.openai_fine_tuning import (
    AUTO_BATCH_SIZE,
    AUTO_BETA,
    AUTO_EPOCHS,
    LIMITS,
    METHODS,
    STATUS,
    CreateFineTuningJobRequest,
    DpoHyperparameters,
    DpoMethod,
    FineTuningError,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
    FineTuningMethod,
    Hyperparameters,
    ListFineTuningJobsRequest,
    PageRequest,
    ReinforcementHyperparameters,
    ReinforcementMethod,
    ResolvedHyperparameters,
    SupervisedMethod,
    WandbIntegration,
    WandbSettings,
)
from llama_post.distribution.fine_tuning_events import job_checkpoint, job_events, page_of
from llama_post.errors import (
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    NotSupportedError,
)
from llama_post.schema import FileContent

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

    def __getattr__(self, name: str) -> Any:  # the rest of the jobs' routes: merge, export
        return getattr(self.__dict__["jobs"], name)

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

    async def estimate_reinforce(self, request: ReinforceRequest) -> TrainingEstimate:
        return await self.jobs.estimate_reinforce(request)

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
        method, params = OPENAI_METHOD[request.method](request)
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
            method=method,
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
        events = job_events(status, metrics, await self._file_of(data.dataset_id))
        page, has_more = page_of(events[::-1], request, lambda e: e.id)
        return FineTuningJobEventList(data=page, has_more=has_more)

    async def list_fine_tuning_checkpoints(
        self, fine_tuning_job_id: str, request: PageRequest
    ) -> FineTuningJobCheckpointList:
        artifacts = await self.get_job_artifacts((await self._status(fine_tuning_job_id)).job_uuid)
        found = [job_checkpoint(c) for c in artifacts.checkpoints][::-1]  # newest first
        page, has_more = page_of(found, request, lambda c: c.id)
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
    """The job's hyperparameters as OpenAI states them, whatever its method."""
    training = request.training_config
    return ResolvedHyperparameters(
        batch_size=training.data.batch_size,
        learning_rate_multiplier=round(training.optimizer.lr / BASE_LR[request.tuning.type], 9),
        n_epochs=training.n_epochs,
    )


Viewed = tuple[FineTuningMethod, ResolvedHyperparameters]


def _supervised(request: TrainingRequest) -> Viewed:
    params = _resolved(request)
    hyperparameters = Hyperparameters(**params.model_dump(exclude={"beta"}))
    method = SupervisedMethod(hyperparameters=hyperparameters)
    return FineTuningMethod(type="supervised", supervised=method), params


def _dpo(request: TrainingRequest) -> Viewed:
    beta = DPO.narrow(request).algorithm_config.beta
    params = _resolved(request).model_copy(update={"beta": beta})
    method = DpoMethod(hyperparameters=DpoHyperparameters(**params.model_dump()))
    return FineTuningMethod(type="dpo", dpo=method), params


def _reinforcement(request: TrainingRequest) -> Viewed:
    params = _resolved(request)
    method = ReinforcementMethod(
        grader=GRPO.narrow(request).grading,
        hyperparameters=ReinforcementHyperparameters(**params.model_dump(exclude={"beta"})),
    )
    return FineTuningMethod(type="reinforcement", reinforcement=method), params


# OpenAI's view of a native job, by the job's method (one entry per method object): its
# `method`, and its hyperparameters with what only that method has (DPO's beta).
OPENAI_METHOD: dict[str, Callable[[TrainingRequest], Viewed]] = {
    SFT.name: _supervised,
    DPO.name: _dpo,
    GRPO.name: _reinforcement,
}


def _estimated_finish(status: PostTrainingJobStatusResponse) -> int | None:
    progress = status.progress
    if status.status != JobStatus.in_progress or not status.started_at or progress.step < 1:
        return None
    elapsed = time.time() - status.started_at
    return int(status.started_at + elapsed * progress.total_steps / progress.step)
