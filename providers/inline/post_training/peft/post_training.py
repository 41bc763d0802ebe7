"""The PostTraining API of `inline::peft`: what is peft's own on top of the shared local jobs
(`providers/jobs/local.py`): checking a request against its model and data, the pre-flight
report, and the recipe a worker runs."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from llama_post.apis.datasets import DatasetPurpose, Datasets
from llama_post.apis.models import Models
from llama_post.apis.post_training import (
    LoraFinetuningConfig,
    PreferenceOptimizeRequest,
    TrainingRequest,
)
from llama_post.errors import InvalidRequestError, NotFoundError
from providers.inline.post_training.peft.config import PeftPostTrainingConfig
from providers.inline.post_training.peft.preflight import prepare
from providers.jobs.folder import (
    JobSpec,
    Prepared,
)
from providers.jobs.local import LocalJobs

log = logging.getLogger(__name__)
REQUEST: TypeAdapter[TrainingRequest] = TypeAdapter(TrainingRequest)


class PeftPostTraining(LocalJobs):
    """LoRA and full fine-tuning (SFT, DPO) with transformers + peft, in worker processes that
    run `recipe_sft` or `recipe_dpo` over the job's folder."""

    def __init__(
        self, config: PeftPostTrainingConfig, datasets: Datasets, models: Models, provider_id: str
    ) -> None:
        super().__init__(config, datasets, models, provider_id)
        self.config = config

    def worker(self, request: TrainingRequest, job_dir: Path) -> list[str]:
        return [sys.executable, "-m", _recipe(request), str(job_dir)]

    async def prepare(self, request: TrainingRequest, job_uuid: str) -> Prepared:
        request.training_config.data  # noqa: B018  (a job without a dataset: the 400 first)
        dpo = isinstance(request, PreferenceOptimizeRequest)
        model_field = "finetuned_model" if dpo else "model"
        tuning_field = "finetuning_config" if dpo else "algorithm_config"
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
        _refuse_unsupported(request)  # after the lookups: a missing model is a 404 first
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
        if dpo:
            wanted = {DatasetPurpose.preference}
        elif data.data_format is None:  # the dataset's purpose says how to read its rows
            wanted = {DatasetPurpose.instruct, DatasetPurpose.dialog}
        else:
            wanted = {DatasetPurpose(data.data_format)}
        train, purpose = await self._rows(data.dataset_id, wanted, "dataset_id")
        if not dpo:
            data.data_format = "instruct" if purpose == DatasetPurpose.instruct else "dialog"
        validation = None
        if data.validation_dataset_id:
            validation, _ = await self._rows(
                data.validation_dataset_id, {purpose}, "validation_dataset_id"
            )
        if dpo and data.data_format is not None:
            _check_prompt_field(data.data_format, train, validation)
        checkpoint_dir = self._checkpoint_dir(request, job_uuid)
        spec = JobSpec(
            job_uuid=job_uuid,
            request=request,
            base_folder=base,
            adapter_folder=adapter,
            checkpoint_dir=str(checkpoint_dir),
            device=self._device(),
            torch_threads=self.config.torch_threads,
        )
        return await asyncio.to_thread(prepare, spec, train, validation)


def _recipe(request: TrainingRequest) -> str:
    name = "recipe_dpo" if isinstance(request, PreferenceOptimizeRequest) else "recipe_sft"
    return f"providers.inline.post_training.peft.{name}"


def _refuse_unsupported(request: TrainingRequest) -> None:
    refusals = []
    dpo = isinstance(request, PreferenceOptimizeRequest)
    algo = request.tuning
    tuning_field = "finetuning_config" if dpo else "algorithm_config"
    if isinstance(algo, LoraFinetuningConfig) and algo.quantize_base:
        refusals.append((f"{tuning_field}.quantize_base", "a quantized base is not supported"))
    data = request.training_config.data
    if dpo:
        if data.packed:
            refusals.append(("training_config.data_config.packed", "DPO trains on whole pairs"))
        if data.train_on_input:
            refusals.append(
                ("training_config.data_config.train_on_input", "DPO compares the answers only")
            )
    eff = request.training_config.efficiency_config
    if (
        eff is not None
        and not eff.enable_activation_checkpointing
        and "activation_checkpointing_every_n_layers" in eff.model_fields_set
    ):
        refusals.append(
            (
                "training_config.efficiency_config.activation_checkpointing_every_n_layers",
                "applies only with enable_activation_checkpointing",
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
                        "is not supported by the single-process trainer",
                    )
                )
    if request.hyperparam_search_config:
        refusals.append(("hyperparam_search_config", "hyperparameter search is not supported"))
    if refusals:
        field, why = refusals[0]
        raise InvalidRequestError(f"{field}: {why}; leave it unset or false", param=field)


def _check_prompt_field(
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
