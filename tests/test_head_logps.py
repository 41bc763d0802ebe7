"""The output head's log-probabilities: a frozen head's gradient, computed in the forward pass,
equals autograd's through the ordinary log-softmax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from providers.inline.post_training.peft.training import frozen_head_logps, head_logps


def test_the_frozen_head_gradient_is_autograds() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(50, 8), torch.randn(50)
    h = torch.randn(7, 8, requires_grad=True)
    y = torch.randint(0, 50, (7,))
    upstream = torch.randn(7)

    ours = frozen_head_logps(h, y, weight, bias)
    torch.autograd.backward((ours * upstream).sum())
    assert h.grad is not None
    ours_grad, h.grad = h.grad.clone(), None

    reference = torch.log_softmax(h @ weight.T + bias, -1).gather(1, y[:, None]).squeeze(1)
    torch.autograd.backward((reference * upstream).sum())
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours_grad, h.grad)


def test_frozen_and_trained_heads_agree_on_a_model(tiny_model: Path) -> None:
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    head = model.get_output_embeddings()
    states = torch.randn(5, head.in_features, requires_grad=True)
    labels = torch.randint(0, head.out_features, (5,))
    results = []
    for trained in (False, True):
        head.weight.requires_grad_(trained)
        logps = head_logps(model, states, labels)
        torch.autograd.backward(logps.sum())
        assert states.grad is not None
        results.append((logps.detach(), states.grad.clone()))
        states.grad = None
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
