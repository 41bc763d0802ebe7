"""The pre-flight check: what a job would train on, computed without training.

It runs for `POST /v1/post-training/preflight` and again when a job is created, so a bad
request fails in seconds with the rows and fields at fault.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any

from llama_post.apis.post_training import (
    LoraFinetuningConfig,
    PreflightResponse,
    RowProblem,
    TokenStats,
    TrainingRequest,
)
from llama_post.errors import InvalidRequestError
from providers.jobs.folder import JobSpec, Prepared
from providers.training.data import Example, marked, steps_per_epoch
from providers.training.methods import method_of

Plan = Callable[[list[Example], TrainingRequest], list[int]]


def prepare(
    spec: JobSpec,
    rows: list[dict[str, Any]],
    validation: list[dict[str, Any]] | None,
    plan: Plan = steps_per_epoch,
) -> Prepared:
    """The rows rendered as the trainer will see them, and the report on them. `plan` is the
    trainer's count of optimizer steps per epoch, from the examples (one per row)."""
    from transformers import AutoTokenizer

    request = spec.request
    data = request.training_config.data
    if validation is None:
        rows, validation = _split(rows, data.validation_split, request.training_config.seed)
    if not rows:
        raise InvalidRequestError(
            "training_config.data_config.dataset_id: the dataset is empty",
            param="training_config.data_config.dataset_id",
        )
    tokenizer = AutoTokenizer.from_pretrained(spec.base_folder)
    # each row is one example, or a pair (prompt + chosen, prompt + rejected) for DPO
    method = method_of(request)
    per_row = [method.render(r, tokenizer, request) for r in rows]
    errors = [
        RowProblem(
            row=i + 1,
            message=f"no trained tokens within max_seq_len {data.max_seq_len}"
            f" (the {'answer' if len(row) == 1 else ('chosen', 'rejected')[k]} is "
            f"{e.length} tokens with its prompt)",
        )
        for i, row in enumerate(per_row)
        for k, e in enumerate(row)
        if e.trained == 0
    ][:50]
    examples = [e for row in per_row for e in row]
    lengths = sorted(e.length for e in examples)
    steps = plan([row[0] for row in per_row], request)
    report = PreflightResponse(
        rows=len(rows),
        validation_rows=len(validation),
        token_lengths=TokenStats(
            min=lengths[0],
            max=lengths[-1],
            mean=sum(lengths) / len(lengths),
            p50=lengths[len(lengths) // 2],
            p95=lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))],
        ),
        trained_tokens=sum(e.trained for e in examples),
        truncated_rows=sum(1 for e in examples if e.truncated),
        max_seq_len=data.max_seq_len,
        steps_per_epoch=steps[0],
        total_steps=sum(steps),
        example="\n\n".join(marked(e, tokenizer) for e in per_row[0]),
        errors=errors,
    )
    return Prepared(spec, rows, validation, report, per_row)


def check_lora_targets(
    base_folder: str, algo: LoraFinetuningConfig, field: str = "algorithm_config"
) -> None:
    """Every LoRA target must name modules the model has (checked on an empty 'meta' model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    names = [name for name, _ in model.named_modules()]
    leaves = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    for target in lora_targets(algo, {n.rsplit(".", 1)[-1] for n in names}):
        if not any(n == target or n.endswith("." + target) for n in names):
            raise InvalidRequestError(
                f"{field}.lora_attn_modules: the model has no module {target!r}; "
                f"its linear layers are {', '.join(leaves)}",
                param=f"{field}.lora_attn_modules",
            )


def _split(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = max(1, int(len(rows) * fraction))
    keep = sorted(order[held:])
    return [rows[i] for i in keep], [rows[i] for i in sorted(order[:held])]


# torchtune's names for the attention projections, which Llama Stack's clients send
# (`q_proj`, `k_proj`, `v_proj`, `output_proj`), and the names Hugging Face architectures give
# the same module, the first the model has being the one adapted.
TORCHTUNE_NAMES = {"output_proj": ("o_proj", "out_proj", "dense")}


def lora_targets(algo: LoraFinetuningConfig, modules: Collection[str]) -> list[str]:
    """The model's own names of the modules a LoRA config adapts: `modules` holds the model's
    module names (their last part); a torchtune name it lacks is its own name for that module.
    A name that is neither stays as given, for `check_lora_targets` to refuse by name."""
    targets = [_own_name(name, modules) for name in algo.lora_attn_modules]
    if algo.apply_lora_to_mlp:
        targets += ["gate_proj", "up_proj", "down_proj"]
    if algo.apply_lora_to_output:
        targets.append("lm_head")
    return list(dict.fromkeys(targets))


def _own_name(name: str, modules: Collection[str]) -> str:
    if name in modules:
        return name
    return next((n for n in TORCHTUNE_NAMES.get(name, ()) if n in modules), name)
