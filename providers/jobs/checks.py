"""The creation checks every local trainer runs first (`gather`): the model registered and its
weights readable here, the fields no local trainer honours and the trainer's own refusals, the
LoRA rank its provider serves, the rows read and matched to the job's method, the checkpoint
folder and the precision. What is left is the trainer's `prepare`."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from llama_post.apis.datasets import DatasetPurpose, Datasets, IterRowsRequest
from llama_post.apis.datasets.purpose import FREE_FORM
from llama_post.apis.models import Models
from llama_post.apis.post_training import LoraFinetuningConfig, TrainingRequest
from llama_post.apis.post_training.access import InferenceAccess
from llama_post.apis.post_training.graders import Grader
from llama_post.errors import InvalidRequestError, NotFoundError
from llama_post.graders import GraderRunner, GraderSettings
from llama_post.storage import resolve_path
from providers.jobs.config import LocalJobsConfig
from providers.jobs.folder import JobSpec
from providers.jobs.launch import Launch
from providers.jobs.trackers import Roots
from providers.jobs.trackers import refusals as tracker_refusals
from providers.jobs.trainer import Gathered, Trainer
from providers.training.methods import method_of
from providers.training.reinforce import score_models
from providers.utils.precision import UnsupportedPrecision, choose

EFFICIENCY = "training_config.efficiency_config"
DATA = "training_config.data_config"


class CreationChecks:
    def __init__(
        self,
        config: LocalJobsConfig,
        datasets: Datasets,
        models: Models,
        trainer: Trainer,
        launch: Launch,
        roots: Roots,
    ) -> None:
        self.config = config
        self.datasets = datasets
        self.models = models
        self.trainer = trainer
        self.launch = launch
        self.roots = roots
        self.grader_settings = GraderSettings()  # the distribution's, once the stack sets them
        self.inference_access: InferenceAccess | None = None  # the stack's, once it sets it

    async def gather(self, request: TrainingRequest, job_uuid: str) -> Gathered:
        """What every trainer checks first: the model (registered, its weights readable here,
        a LoRA rank its provider serves), the refusals, and the rows, read from the datasets
        and checked against the job's method."""
        method = method_of(request)
        request.training_config.data  # noqa: B018  (a job without a dataset: the 400 first)
        if method.grader is not None:
            method.grader(request)  # nor without a grader
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
        if method.grader is not None:  # a bad template or pattern: a 400 naming it
            GraderRunner(method.grader(request), self.grader_settings)
            await self.scoring_models(method.grader(request))
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
        reads_purpose = method.api.format_is_purpose  # else data_format names a prompt field
        if reads_purpose and data.data_format is not None:
            wanted = {DatasetPurpose(data.data_format)}
        else:  # the dataset's purpose says how to read its rows
            wanted = set(method.api.purposes)
        shape_rows = method.api.shape_rows
        if shape_rows is not None:
            wanted |= FREE_FORM
        train, purpose = await self.rows(data.dataset_id, wanted, "dataset_id")
        validation = None
        if data.validation_dataset_id:
            validation, _ = await self.rows(
                data.validation_dataset_id, {purpose}, "validation_dataset_id"
            )
        if purpose.free_form and shape_rows is not None:  # rows kept as given: read them now
            train, data.data_format = shape_rows(train, data.data_format, f"{DATA}.dataset_id")
            if validation is not None:
                validation, _ = shape_rows(
                    validation, data.data_format, f"{DATA}.validation_dataset_id"
                )
        elif reads_purpose:
            data.data_format = "instruct" if purpose == DatasetPurpose.instruct else "dialog"
        elif data.data_format is not None:
            check_prompt_field(data.data_format, train, validation)
        checkpoint_dir = self.checkpoint_dir(request, job_uuid)
        device = self.launch.device()
        try:
            precision = await asyncio.to_thread(choose, request.training_config.dtype, device)
        except UnsupportedPrecision as exc:
            raise InvalidRequestError(
                f"training_config.dtype: {exc}", param="training_config.dtype"
            ) from None
        torchrun = self.launch.torchrun
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
            ranks=self.launch.ranks(),
            sharding=torchrun.sharding if torchrun else "none",
            grader_settings=dataclasses.asdict(self.grader_settings)
            if method.grader is not None
            else {},
        )
        return Gathered(model, spec, train, validation)

    async def scoring_models(self, grader: Grader) -> None:
        """A score_model grader's model, which the job's worker will call here as the job's
        owner: one the caller may use (400 naming the field, as the grader routes answer), and
        a server to call it on."""
        for where, model_id in score_models(grader):
            try:
                await self.models.get_model(model_id)
            except NotFoundError:
                raise InvalidRequestError(
                    f"{where}.model: no model {model_id!r} you may use is served here",
                    param=f"{where}.model",
                ) from None
            if self.inference_access is None:
                raise InvalidRequestError(
                    f"{where}: this trainer's jobs cannot call the server's inference",
                    param=where,
                )
            self.inference_access.check(where)

    def refuse(self, request: TrainingRequest) -> None:
        """Raise a 400 naming the first field this trainer cannot honour."""
        for field, why in self.refusals(request):
            raise InvalidRequestError(f"{field}: {why}", param=field)

    def refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        """(field, why) for each field of the request this trainer cannot honour: those no
        local trainer honours, then the trainer's own. A method the trainer does not run is
        refused by the trainer alone."""
        own = self.trainer.refusals(request)
        if request.method not in self.trainer.methods:
            return own
        return self.shared_refusals(request) + own

    def shared_refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        """(field, why) for each field of the request no local trainer honours here."""
        method = method_of(request)
        refusals = []
        algo = request.tuning
        if isinstance(algo, LoraFinetuningConfig) and algo.quantize_base:
            refusals.append(
                (
                    f"{request.tuning_field}.quantize_base",
                    "a quantized base is not supported; leave it unset or false",
                )
            )
        data = request.training_config.data
        if method.whole_answers is not None:
            if data.packed:
                refusals.append(
                    (
                        "training_config.data_config.packed",
                        f"{method.whole_answers}; leave it unset or false",
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
        refusals += method.refusals(request)
        eff = request.training_config.efficiency_config
        if (
            eff is not None
            and not eff.enable_activation_checkpointing
            and "activation_checkpointing_every_n_layers" in eff.model_fields_set
        ):
            refusals.append(
                (
                    f"{EFFICIENCY}.activation_checkpointing_every_n_layers",
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
                            f"{EFFICIENCY}.{name}",
                            "is not supported by the single-process trainer; leave it false",
                        )
                    )
        limits = request.supervision
        if (limits.max_wall_seconds or limits.max_cost) and self.trainer.calibrator(Path()) is None:
            field = "max_wall_seconds" if limits.max_wall_seconds else "max_cost"
            refusals.append(
                (
                    f"supervision.{field}",
                    "this trainer runs no calibration, so it cannot estimate a job's time; "
                    "leave it unset",
                )
            )
        refusals += self.launch.refusals(request, self.trainer.multi_rank(method))
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

    async def rows(
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

    def checkpoint_dir(self, request: TrainingRequest, job_uuid: str) -> Path:
        """The job's checkpoint folder: its own under the root, or `checkpoint_dir` there; a
        folder of another owner's job (resumed from, rewritten, listed) is refused, naming
        nothing of theirs."""
        root = self.config.checkpoint_root.resolve()
        if request.checkpoint_dir is None:
            folder = resolve_path(job_uuid, "job_uuid", root)
            if not self.roots.usable(folder):
                raise InvalidRequestError(
                    f"job_uuid: {job_uuid!r} cannot be used; choose another", param="job_uuid"
                )
            return folder
        folder = resolve_path(request.checkpoint_dir, "checkpoint_dir", root)
        if not folder.is_relative_to(root) or folder == root:
            raise InvalidRequestError(
                f"checkpoint_dir: {request.checkpoint_dir} must be a folder under {root}",
                param="checkpoint_dir",
            )
        if not self.roots.usable(folder):
            raise InvalidRequestError(
                f"checkpoint_dir: {request.checkpoint_dir} is not a folder this job may use; "
                "choose another",
                param="checkpoint_dir",
            )
        return folder


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
