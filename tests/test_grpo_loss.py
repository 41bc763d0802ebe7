"""GRPO's advantages, clipped loss, KL and answer log-probs against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from providers.inline.post_training.peft.recipe_grpo import (
    GRPOTerms,
    group_advantages,
    grpo_loss,
    sequence_logps,
)
from providers.training.data import IGNORE, Example


def test_advantages_are_centred_per_group_over_its_std_and_clamped() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    std = group_advantages(rewards, "std", None)
    # group 1: mean 0.5, sample std sqrt(4 * 0.25 / 3)
    s1 = math.sqrt(1 / 3)
    a = 0.5 / (s1 + 1e-4)
    assert std[0].tolist() == pytest.approx([a, -a, -a, a])
    assert std[1].tolist() == [0.0] * 4  # no variance, no signal
    # group 3: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert std[2].tolist() == pytest.approx([0.75 / 0.5001] + [-0.25 / 0.5001] * 3)
    centred = group_advantages(rewards, "none", None)
    assert centred[2].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    clamped = group_advantages(rewards, "std", 1.0)
    assert clamped[2].tolist() == pytest.approx([1.0] + [-0.25 / 0.5001] * 3)


def _hand(
    logps: list[float],
    sampled: list[float],
    reference: list[float],
    advantages: list[float],
    owner: list[int],
    eps: float,
    beta: float,
    aggregation: str,
) -> tuple[float, list[float], float, int]:
    """The loss, d loss / d logp per token, the summed KL and the clipped tokens, by hand."""
    lengths = [owner.count(i) for i in range(len(advantages))]
    normalizer = len(advantages) if aggregation == "sequence" else len(logps)
    loss, grads, kl_sum, clipped = 0.0, [], 0.0, 0
    for lp, old, ref, seq in zip(logps, sampled, reference, owner, strict=True):
        a = advantages[seq]
        ratio = math.exp(lp - old)
        bounded = min(max(ratio, 1 - eps), 1 + eps)
        surrogate = min(ratio * a, bounded * a)
        is_clipped = bounded * a < ratio * a
        clipped += is_clipped
        d = ref - lp
        kl = math.exp(d) - d - 1
        kl_sum += kl
        weight = (1 / lengths[seq] if aggregation == "sequence" else 1.0) / normalizer
        loss += weight * (-surrogate + beta * kl)
        d_surrogate = 0.0 if is_clipped else ratio * a  # d(ratio * a) / d logp
        d_kl = 1 - math.exp(d)
        grads.append(weight * (-d_surrogate + beta * d_kl))
    return loss, grads, kl_sum, clipped


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
def test_the_clipped_loss_kl_and_gradient_match_a_hand_computation(aggregation: str) -> None:
    logps = [-1.0, -2.0, -0.5, -0.7, -3.0]
    sampled = [-1.3, -2.0, -0.1, -0.7, -2.5]  # ratios e^0.3 (clipped for A > 0), 1, e^-0.4 ...
    reference = [-1.1, -1.9, -0.4, -1.0, -3.2]
    advantages = [1.0, -1.0, 0.5]
    owner = [0, 0, 1, 2, 2]
    eps, beta = 0.2, 0.1
    want, grads, kl_sum, clipped = _hand(
        logps, sampled, reference, advantages, owner, eps, beta, aggregation
    )
    assert clipped == 2  # token 0 (ratio 1.35, A > 0) and token 2 (ratio 0.67, A < 0)

    policy = torch.tensor(logps, requires_grad=True)
    terms = GRPOTerms(
        logps=policy,
        sampled=torch.tensor(sampled),
        reference=torch.tensor(reference),
        advantages=torch.tensor(advantages),
        owner=torch.tensor(owner),
    )
    normalizer = 3.0 if aggregation == "sequence" else 5.0
    loss, stats = grpo_loss(terms, eps, beta, aggregation, normalizer)  # type: ignore[arg-type]
    torch.autograd.backward(loss)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    assert policy.grad is not None
    assert policy.grad.tolist() == pytest.approx(grads, rel=1e-5)
    assert stats == {"kl": pytest.approx(kl_sum, rel=1e-5), "clipped": 2.0, "tokens": 5.0}


def test_one_update_per_batch_is_the_plain_policy_gradient() -> None:
    """With the sampling policy = the policy (num_iterations 1) the ratio is 1 and nothing is
    clipped: the gradient is -A / (length * answers) per token, the loss 0 before KL."""
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    terms = GRPOTerms(
        logps, logps.detach(), None, torch.tensor([2.0, -1.0]), torch.tensor([0, 0, 1])
    )
    loss, stats = grpo_loss(terms, 0.2, 0.0, "sequence", 2.0)
    torch.autograd.backward(loss)
    assert float(loss.detach()) == pytest.approx(-(2.0 + -1.0) / 2)
    assert logps.grad is not None
    assert logps.grad.tolist() == pytest.approx([-2.0 / 2 / 2, -2.0 / 2 / 2, 1.0 / 1 / 2])
    assert stats["clipped"] == 0 and stats["kl"] == 0


def test_answer_logps_packed_equal_each_answer_run_alone(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.eval()
    examples = [
        Example([5, 6, 7, 8, 9], [IGNORE, IGNORE, IGNORE, 8, 9], 5),
        Example([10, 11, 12], [IGNORE, IGNORE, 12], 3),
        Example([13, 14, 15, 16], [IGNORE, 14, 15, 16], 4),
    ]
    with torch.no_grad():
        logps, owner = sequence_logps(model, examples, 2, "cpu")
        want, owners = [], []
        for k, example in enumerate(examples):
            logits = model(torch.tensor([example.input_ids])).logits[0].log_softmax(-1)
            for i, label in enumerate(example.labels):
                if label != IGNORE:
                    want.append(float(logits[i - 1, label]))
                    owners.append(k)
    by_answer = sorted(zip(owner.tolist(), logps.tolist(), strict=True), key=lambda p: p[0])
    assert [o for o, _ in by_answer] == owners
    assert [v for _, v in by_answer] == pytest.approx(want, abs=1e-4)
