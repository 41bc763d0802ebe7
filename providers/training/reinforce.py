"""What every local trainer checks of a reinforcement (GRPO) request before it is queued."""

from __future__ import annotations

from typing import Any

from llama_post.apis.post_training import FullFinetuningConfig, ReinforceRequest


def refusals(request: ReinforceRequest) -> list[tuple[str, str]]:
    """(field, why) for each knob of a GRPO request that the local recipe cannot honour."""
    found = []
    algo = request.algorithm_config
    if algo.kl_coef and isinstance(request.finetuning_config, FullFinetuningConfig):
        found.append(
            (
                "algorithm_config.kl_coef",
                "the KL penalty's reference is the base with the LoRA adapter disabled; full "
                "fine-tuning has no second copy of the weights to compare with: use LoRA, or "
                "set kl_coef to 0",
            )
        )
    if request.training_config.data.data_format is not None:
        found.append(
            (
                "training_config.data_config.data_format",
                "a prompt row is read by whichever of prompt or messages it has; leave it unset",
            )
        )
    return found


def score_models(grader: Any, where: str = "grader") -> list[tuple[str, str]]:
    """(field, model) of each score_model grader in `grader` (a multi's included): a job's
    worker calls this server's inference for those."""
    if getattr(grader, "type", None) == "score_model":
        return [(where, str(grader.model))]
    graders = getattr(grader, "graders", None) or {}
    return [
        found for name, g in graders.items() for found in score_models(g, f"{where}.graders.{name}")
    ]
