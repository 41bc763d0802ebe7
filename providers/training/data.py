"""Rows to training examples: rendering, the trained-token mask, truncation, batching, packing.

Both the pre-flight check (in the server) and the recipe (in the worker) use these, so what the
check reports is what training sees. Dialog is rendered with the model's own chat template, the
one Inference uses; an instruct row is the conversation `user: prompt`, `assistant: completion`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from llama_post.apis.post_training import TrainingRequest

IGNORE = -100  # the label of a token that is not learned
T = TypeVar("T")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.length > len(self.input_ids)

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def messages_of(row: dict[str, Any], data_format: str | None) -> list[dict[str, str]]:
    if data_format == "instruct":
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def render(
    row: dict[str, Any],
    data_format: str | None,
    tokenizer: Any,
    train_on_input: bool,
    max_seq_len: int,
) -> Example:
    """Tokenize one row; labels keep assistant tokens only, unless `train_on_input`."""
    return render_messages(messages_of(row, data_format), tokenizer, train_on_input, max_seq_len)


def render_messages(
    messages: list[dict[str, str]],
    tokenizer: Any,
    train_on_input: bool,
    max_seq_len: int,
    first_trained: int = 0,
) -> Example:
    """Tokenize a conversation; labels keep the assistant turns from `first_trained` on."""
    text, spans = _text_and_spans(messages, tokenizer, first_trained)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [
        token if train_on_input or any(a <= start < b for a, b in spans) else IGNORE
        for token, (start, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return Example(ids[:max_seq_len], labels[:max_seq_len], len(ids))


def render_pair(row: dict[str, Any], tokenizer: Any, max_seq_len: int) -> tuple[Example, Example]:
    """A preference row as two examples, prompt + chosen and prompt + rejected, whose labels
    keep the answer only. A prompt is `prompt` (a user turn) or `messages`; an answer is a
    string (an assistant turn) or a list of messages."""
    if row.get("messages") is not None:
        prompt = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    else:
        prompt = [{"role": "user", "content": row["prompt"]}]

    def answer(value: Any) -> list[dict[str, str]]:
        if isinstance(value, str):
            return [{"role": "assistant", "content": value}]
        return [{"role": m["role"], "content": m["content"]} for m in value]

    return (
        render_messages(prompt + answer(row["chosen"]), tokenizer, False, max_seq_len, len(prompt)),
        render_messages(
            prompt + answer(row["rejected"]), tokenizer, False, max_seq_len, len(prompt)
        ),
    )


def _text_and_spans(
    messages: list[dict[str, str]], tokenizer: Any, first_trained: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (those from
    `first_trained` on)."""
    if not tokenizer.chat_template:
        prompt = "".join(
            m["content"]
            for i, m in enumerate(messages)
            if m["role"] != "assistant" or i < first_trained
        )
        answer = "".join(
            m["content"]
            for i, m in enumerate(messages)
            if m["role"] == "assistant" and i >= first_trained
        )
        eos = tokenizer.eos_token or ""
        return prompt + answer + eos, [(len(prompt), len(prompt) + len(answer) + len(eos))]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first_trained:
            continue
        before = (
            tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            if i
            else ""
        )
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        spans.append((len(before), len(through)))
    return text, spans


def epoch_order(count: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order of examples in an epoch: a function of the seed and the epoch alone, so a
    resumed job sees exactly the batches it would have seen."""
    order = list(range(count))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def group(
    examples: list[Example], order: list[int], batch_size: int, packed: bool, max_seq_len: int
) -> list[list[list[Example]]]:
    """Batches as lists of rows; a row is one example, or several packed ones."""
    if not packed:
        rows = [[examples[i]] for i in order]
    else:
        rows = []
        current: list[Example] = []
        length = 0
        for i in order:
            example = examples[i]
            if current and length + len(example.input_ids) > max_seq_len:
                rows.append(current)
                current, length = [], 0
            current.append(example)
            length += len(example.input_ids)
        if current:
            rows.append(current)
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def repack(batch: list[list[Example]]) -> list[list[Example]]:
    """The same examples in as few rows as fit the batch's widest row (first fit, longest
    first). Trained as packed rows, the batch computes the same loss as when padded, without
    spending work on padding."""
    width = max(sum(len(e.input_ids) for e in row) for row in batch)
    return first_fit([e for row in batch for e in row], lambda e: len(e.input_ids), width)


def first_fit(items: list[T], size: Callable[[T], int], width: int) -> list[list[T]]:
    """Items in rows of at most `width` (an item wider than that gets a row of its own)."""
    rows: list[list[T]] = []
    room: list[int] = []
    for item in sorted(items, key=lambda i: -size(i)):
        slot = next((i for i, free in enumerate(room) if free >= size(item)), None)
        if slot is None:
            rows.append([item])
            room.append(width - size(item))
        else:
            rows[slot].append(item)
            room[slot] -= size(item)
    return rows


def collate(batch: list[list[Example]], pad_id: int, packed: bool) -> dict[str, Any]:
    """Tensors for one batch. Packed rows restart `position_ids` at each example and carry no
    attention mask, from which transformers builds a block-diagonal causal mask: no token
    attends across an example boundary. Each example's first label is ignored, so no token is
    asked to predict the next example."""
    import torch

    width = max(sum(len(e.input_ids) for e in row) for row in batch)
    ids, labels, positions, mask = [], [], [], []
    for row in batch:
        r_ids: list[int] = []
        r_labels: list[int] = []
        r_pos: list[int] = []
        for example in row:
            r_ids += example.input_ids
            r_labels += [IGNORE, *example.labels[1:]]
            r_pos += list(range(len(example.input_ids)))
        pad = width - len(r_ids)
        mask.append([1] * len(r_ids) + [0] * pad)
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_labels + [IGNORE] * pad)
        r_pos += list(range(len(r_pos), len(r_pos) + pad))
        positions.append(r_pos)
    out: dict[str, Any] = {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
    }
    if packed:
        out["position_ids"] = torch.tensor(positions)
    else:
        out["attention_mask"] = torch.tensor(mask)
    return out


def marked(example: Example, tokenizer: Any) -> str:
    """The example's text with each run of trained tokens inside [[ ]]."""
    out, inside = [], False
    for i, (token, label) in enumerate(zip(example.input_ids, example.labels, strict=True)):
        trained = label != IGNORE and i > 0
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(tokenizer.decode([token]))
    return "".join(out) + ("]]" if inside else "")


def trained_tokens(batch: list[list[Example]]) -> int:
    return sum(e.trained for row in batch for e in row)


def steps_per_epoch(examples: list[Example], request: TrainingRequest, ranks: int = 1) -> list[int]:
    """Optimizer steps in each epoch (packing makes the count depend on the epoch's order);
    with several ranks, a step takes `gradient_accumulation_steps` micro-batches on each."""
    cfg = request.training_config
    data = cfg.data
    plan = []
    for epoch in range(cfg.n_epochs):
        order = epoch_order(len(examples), cfg.seed, epoch, data.shuffle)
        batches = len(group(examples, order, data.batch_size, data.packed, data.max_seq_len))
        steps = max(1, batches // (cfg.gradient_accumulation_steps * ranks)) if batches else 0
        plan.append(min(steps, cfg.max_steps_per_epoch or steps))
    return plan


def prompt_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A prompt row's conversation so far: its `messages`, or `prompt` as a user turn."""
    if row.get("messages") is not None:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}]


def render_prompt(row: dict[str, Any], tokenizer: Any) -> list[int]:
    """The token ids a prompt row's answer is sampled after: the conversation with the
    generation prompt, as the chat completions route renders it."""
    messages = prompt_messages(row)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(m["content"] for m in messages)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
