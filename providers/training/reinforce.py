"""What every local trainer checks of a reinforcement (GRPO) request before it is queued."""

from __future__ import annotations

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
    grader = request.grader
    if grader is not None and _uses_score_model(grader):
        found.append(
            (
                "grader",
                "a score_model grader cannot run inside a training worker yet (it would call "
                "this server's inference from the job); use string_check, text_similarity, "
                "regex, json_schema, python or multi over those",
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


def _uses_score_model(grader: object) -> bool:
    if getattr(grader, "type", None) == "score_model":
        return True
    return any(_uses_score_model(g) for g in (getattr(grader, "graders", None) or {}).values())
