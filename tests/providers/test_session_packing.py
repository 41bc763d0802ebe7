"""A session worker packs a forward_backward's data into as few rows as fit the longest (as the
native trainer packs a batch), and each datum's logprobs, loss and gradients are what it would
get alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from providers.inline.post_training.peft.session_worker import TrainingModel, _packed

LORA = {
    "rank": 4,
    "alpha": 8,
    "train_attn": True,
    "train_mlp": True,
    "train_unembed": True,
    "seed": 0,
}


def _datum(tokens: list[int], weight: float) -> dict[str, Any]:
    return {
        "input_tokens": tokens[:-1],
        "target_tokens": tokens[1:],
        "weights": [weight] * (len(tokens) - 1),
    }


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # the tiny model's
def test_packed_data_are_trained_as_each_alone(tiny_model: Path) -> None:
    torch.manual_seed(0)
    rows = [torch.randint(5, 900, (n,)).tolist() for n in (13, 5, 6, 3)]
    data = [_datum(r, w) for r, w in zip(rows, (1.0, 0.5, 0.0, 2.0), strict=True)]
    ids, _, positions, _ = _packed(data, [len(d["input_tokens"]) for d in data])
    assert ids.shape == (2, 12)  # the three short ones share the second row
    assert positions[1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]  # longest first, padded

    command = {"base": str(tiny_model), "device": "cpu", "lora": LORA}
    packed, alone = TrainingModel(command), TrainingModel(command)
    together = packed.forward_backward(
        {"data": data, "loss": "cross_entropy", "forward_only": False}
    )
    each = [
        alone.forward_backward({"data": [d], "loss": "cross_entropy", "forward_only": False})
        for d in data
    ]
    for got, want in zip(together["outputs"], each, strict=True):
        torch.testing.assert_close(
            torch.tensor(got["logprobs"]),
            torch.tensor(want["outputs"][0]["logprobs"]),
            atol=1e-5,
            rtol=1e-5,
        )
    assert abs(together["loss"] - sum(w["loss"] for w in each)) < 1e-4
    for a, b in zip(packed.params, alone.params, strict=True):  # gradients add up alike
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
