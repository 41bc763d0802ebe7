"""Rendering, masking and packing: what the trainer learns from, checked on the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from providers.training.data import (
    IGNORE,
    Example,
    collate,
    group,
    marked,
    render,
    repack,
)


def test_only_the_assistant_turns_are_learned(tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."},
        ]
    }
    example = render(row, "dialog", tokenizer, train_on_input=False, max_seq_len=512)
    text = marked(example, tokenizer)
    assert text.count("[[") == 2
    assert "[[Hello.<|im_end|>\n]]" in text and "[[Goodbye.<|im_end|>\n]]" in text
    assert "Bye" not in "".join(part.split("]]")[0] for part in text.split("[[")[1:])

    everything = render(row, "dialog", tokenizer, train_on_input=True, max_seq_len=512)
    assert all(label != IGNORE for label in everything.labels)
    assert everything.input_ids == example.input_ids


def test_truncation_is_counted(tokenizer: Any) -> None:
    row = {"prompt": "word " * 50, "completion": "end"}
    example = render(row, "instruct", tokenizer, train_on_input=False, max_seq_len=16)
    assert len(example.input_ids) == 16 and example.truncated and example.length > 16
    assert example.trained == 0


def test_packed_examples_do_not_attend_to_each_other(tokenizer: Any, tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.eval()
    rows = [
        {"prompt": f"Question {i}", "completion": "x " * (i + 1 if i else 60)} for i in range(4)
    ]
    examples = [render(r, "instruct", tokenizer, False, 256) for r in rows]
    packs = group(examples, [0, 1, 2, 3], batch_size=4, packed=True, max_seq_len=256)
    assert len(packs) == 1 and len(packs[0]) == 1 and len(packs[0][0]) == 4  # one row of four

    def summed_loss(batch: list[list[Example]], packed: bool) -> float:
        inputs = collate(batch, tokenizer.eos_token_id, packed)
        n = sum(e.trained for row in batch for e in row)
        with torch.no_grad():
            loss = model(**inputs, num_items_in_batch=n, use_cache=False).loss
        return float(loss) * n

    packed = summed_loss(packs[0], packed=True)
    alone = sum(summed_loss([[e]], packed=False) for e in examples)
    assert abs(packed - alone) < 1e-3 * alone

    padded = group(examples, [0, 1, 2, 3], batch_size=4, packed=False, max_seq_len=256)
    assert abs(summed_loss(padded[0], packed=False) - alone) < 1e-3 * alone
    # the trainer runs a padded batch as the fewest packed rows: same loss, less padding
    repacked = repack(padded[0])
    assert len(repacked) < len(padded[0])
    assert sorted(id(e) for row in repacked for e in row) == sorted(id(e) for e in examples)
    assert abs(summed_loss(repacked, packed=True) - alone) < 1e-3 * alone


def test_the_chunked_completion_loss_equals_transformers_loss(
    tokenizer: Any, tiny_model: Path, monkeypatch: Any
) -> None:
    from transformers import AutoModelForCausalLM

    from providers.inline.post_training.peft import recipe_sft, training

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    rows = [{"prompt": f"Question {i}", "completion": "answer " * (i + 2)} for i in range(5)]
    examples = [render(r, "instruct", tokenizer, False, 256) for r in rows]
    batch = group(examples, list(range(5)), batch_size=5, packed=False, max_seq_len=256)[0]
    inputs = collate(batch, tokenizer.eos_token_id, packed=False)
    n = sum(e.trained for row in batch for e in row)
    expected = model(**inputs, num_items_in_batch=n, use_cache=False).loss * n
    monkeypatch.setattr(training, "LOSS_CHUNK", 7)  # several chunks
    ours = recipe_sft.completion_loss(model, inputs)
    assert abs(float(ours.detach()) - float(expected.detach())) < 1e-3 * float(expected.detach())

    torch.autograd.backward(ours)
    ours_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    model(**inputs, num_items_in_batch=n, use_cache=False).loss.mul(n).backward()
    torch.testing.assert_close(
        ours_grad, model.model.embed_tokens.weight.grad, rtol=1e-3, atol=5e-5
    )
