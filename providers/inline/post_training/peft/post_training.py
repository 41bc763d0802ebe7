"""The PostTraining API of `inline::peft`: what is peft's own on top of the shared local jobs
(`providers/jobs/local.py`): checking a request against its model and data, the pre-flight
report, and the recipe a worker runs."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from llama_post.apis.datasets import Datasets
from llama_post.apis.models import Models
from llama_post.apis.post_training import (
    EfficiencyConfig,
    LoraFinetuningConfig,
    TrainingRequest,
)
from providers.inline.post_training.peft.config import PeftPostTrainingConfig
from providers.jobs.folder import JobSpec, Prepared
from providers.jobs.local import LocalJobs
from providers.training.preflight import check_lora_targets, prepare

log = logging.getLogger(__name__)


class PeftPostTraining(LocalJobs):
    """LoRA and full fine-tuning (SFT, DPO, GRPO) with transformers + peft, in worker processes
    that run `recipe_sft`, `recipe_dpo` or `recipe_grpo` over the job's folder."""

    def __init__(
        self, config: PeftPostTrainingConfig, datasets: Datasets, models: Models, provider_id: str
    ) -> None:
        super().__init__(config, datasets, models, provider_id)
        self.config = config

    multi_rank = frozenset({"sft", "dpo"})  # recipe_grpo's rollouts are not split across ranks

    def worker(self, request: TrainingRequest, job_dir: Path) -> list[str]:
        return [sys.executable, "-m", _recipe(request), str(job_dir)]

    def calibrator(self, folder: Path) -> list[str] | None:
        return [sys.executable, "-m", "providers.inline.post_training.peft.calibrate", str(folder)]

    def lighter(self, spec: JobSpec) -> JobSpec | None:
        """After running out of memory: recompute every layer's activations, unless the job
        already did (the same numbers, for less memory)."""
        efficiency = spec.request.training_config.efficiency_config or EfficiencyConfig()
        every_layer = (
            efficiency.enable_activation_checkpointing
            and efficiency.activation_checkpointing_every_n_layers == 1
        )
        if spec.low_memory or every_layer:
            return None
        return spec.model_copy(update={"low_memory": True})

    async def prepare(self, request: TrainingRequest, job_uuid: str) -> Prepared:
        got = await self.gather(request, job_uuid)
        return await asyncio.to_thread(_prepare, got.spec, got.train, got.validation)


def _prepare(
    spec: JobSpec, train: list[dict[str, Any]], validation: list[dict[str, Any]] | None
) -> Prepared:
    request = spec.request
    if isinstance(request.tuning, LoraFinetuningConfig) and spec.adapter_folder is None:
        check_lora_targets(spec.base_folder, request.tuning, request.tuning_field)
    return prepare(spec, train, validation)


def _recipe(request: TrainingRequest) -> str:
    return f"providers.inline.post_training.peft.recipe_{request.method}"
