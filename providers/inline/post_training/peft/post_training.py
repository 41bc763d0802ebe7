"""The trainer of `inline::peft` over the shared local jobs (`providers/jobs/local.py`): how it
finishes a checked request (its LoRA targets, the pre-flight report), the recipe a worker runs,
its calibration, and its lighter retry after running out of memory."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from llama_post.apis.post_training import EfficiencyConfig, LoraFinetuningConfig, TrainingRequest
from providers.jobs.folder import JobSpec, Prepared
from providers.jobs.trainer import Gathered
from providers.training.methods import METHODS, TrainingMethod, method_of
from providers.training.preflight import check_lora_targets, prepare


class PeftPostTraining:
    """LoRA and full fine-tuning (SFT, DPO, GRPO) with transformers + peft, in worker processes
    that run each method's recipe (`recipe_sft`, `recipe_dpo`, `recipe_grpo`) over the job's
    folder."""

    methods = frozenset(METHODS)

    def refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        return []  # what no local trainer honours is all it refuses

    def multi_rank(self, method: TrainingMethod[Any]) -> bool:
        return method.multi_rank

    def worker(self, request: TrainingRequest, job_dir: Path) -> list[str]:
        return [sys.executable, "-m", method_of(request).recipe, str(job_dir)]

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

    async def prepare(self, got: Gathered, job_dir: Path) -> Prepared:
        return await asyncio.to_thread(_prepare, got.spec, got.train, got.validation)


def _prepare(
    spec: JobSpec, train: list[dict[str, Any]], validation: list[dict[str, Any]] | None
) -> Prepared:
    request = spec.request
    if isinstance(request.tuning, LoraFinetuningConfig) and spec.adapter_folder is None:
        check_lora_targets(spec.base_folder, request.tuning, request.tuning_field)
    return prepare(spec, train, validation)
