"""Our DPO losses and rewards equal TRL's for the same log-probabilities, for each loss type."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from llama_post.apis.post_training import DPOLossType
from providers.inline.post_training.peft.recipe_dpo import dpo_loss


def _trl_loss(
    per_token: torch.Tensor,
    completion_mask: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str,
) -> tuple[float, dict[str, list[float]]]:
    """TRL's own `DPOTrainer._compute_loss`, fed fixed log-probs in place of a model."""
    from trl.trainer.dpo_trainer import DPOTrainer

    metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t
    )
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        use_weighting=False,
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
    )
    zeros = torch.zeros_like(per_token)

    def model(**kwargs: Any) -> Any:
        return SimpleNamespace(
            log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    inputs = {
        "input_ids": torch.ones_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    compute_loss: Any = DPOTrainer._compute_loss
    loss = compute_loss(trainer, model, inputs, return_outputs=False)
    return float(loss), metrics["train"]


@pytest.mark.parametrize("loss_type", list(DPOLossType))
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_our_dpo_loss_is_trls(loss_type: DPOLossType, beta: float) -> None:
    generator = torch.Generator().manual_seed(7)
    pairs, length = 6, 12
    # completion masks: a prompt, then answers of different lengths (chosen rows, then rejected)
    completion_mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    for row in range(2 * pairs):
        start = int(torch.randint(2, 5, (1,), generator=generator))
        end = int(torch.randint(start + 2, length + 1, (1,), generator=generator))
        completion_mask[row, start:end] = 1
    shifted = completion_mask[:, 1:]
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator) * 3 * shifted
    ref_chosen = -torch.rand(pairs, generator=generator) * 10
    ref_rejected = -torch.rand(pairs, generator=generator) * 10

    expected, metrics = _trl_loss(
        per_token, completion_mask, ref_chosen, ref_rejected, beta, loss_type.value
    )
    logps = per_token.sum(dim=1)
    counts = completion_mask.sum(dim=1)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        logps[:pairs],
        logps[pairs:],
        ref_chosen,
        ref_rejected,
        counts[:pairs],
        counts[pairs:],
        beta,
        loss_type,
    )
    assert abs(float(losses.mean()) - expected) < 1e-5
    assert abs(float(chosen_rewards.mean()) - metrics["rewards/chosen"][0]) < 1e-5
    assert abs(float(rejected_rewards.mean()) - metrics["rewards/rejected"][0]) < 1e-5
    margin = float((chosen_rewards - rejected_rewards).mean())
    assert abs(margin - metrics["rewards/margins"][0]) < 1e-5
    accuracy = float((chosen_rewards > rejected_rewards).float().mean())
    assert abs(accuracy - metrics["rewards/accuracies"][0]) < 1e-5


def test_a_shared_prompt_scores_like_separate_sequences(tokenizer: Any, tiny_model: Path) -> None:
    """pair_logps lays each pair out as [prompt, chosen, rejected] with the prompt computed once;
    the answers' log-probs must equal those of each full sequence run on its own."""
    from transformers import AutoModelForCausalLM

    from providers.inline.post_training.peft.recipe_dpo import Pair, pair_logps
    from providers.inline.post_training.peft.training import label_logps
    from providers.training.data import collate, render_pair

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.eval()
    rows: list[dict[str, Any]] = [
        {"prompt": f"Question {i}: " + "why? " * i, "chosen": "Yes. " * (i + 1), "rejected": "No"}
        for i in range(5)
    ]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "chosen": [{"role": "assistant", "content": "Hello there."}],
            "rejected": "Go away.",
        }
    )
    pairs = [Pair(*render_pair(row, tokenizer, 256)) for row in rows]
    assert all(p.shared > 10 for p in pairs)
    with torch.no_grad():
        chosen, rejected, n_chosen, n_rejected = pair_logps(
            model, pairs, tokenizer.eos_token_id, "cpu"
        )
        for i, pair in enumerate(pairs):
            for example, got, count in (
                (pair.chosen, chosen[i], n_chosen[i]),
                (pair.rejected, rejected[i], n_rejected[i]),
            ):
                alone, _ = label_logps(model, collate([[example]], tokenizer.eos_token_id, False))
                assert abs(float(alone.sum()) - float(got)) < 1e-4 * max(1.0, abs(float(got)))
                assert int(count) == example.trained
