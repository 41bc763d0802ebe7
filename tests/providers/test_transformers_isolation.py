"""A sequence of the transformers engine that cannot be sampled fails alone: the sampler turns
values that give no distribution into a clear `GenerationError`, and the engine ends that one
sequence between two steps while the greedy sequences decoded beside it say what they say alone.
(tests/server/test_poisoned_requests.py sends the same poison through a real server.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llama_post.errors import GenerationError
from providers.inline.inference.transformers.engine import Engine, Event, Sequence
from providers.inline.inference.transformers.loading import load_base
from providers.inline.inference.transformers.sampling import Sampler, SamplingParams

NAN, INF = float("nan"), float("inf")
VOCAB = 8
LOGITS = torch.tensor([1.0, 3.0, 2.5, -1.0, 0.0, 2.9, -4.0, 0.5])


def sample(logits: torch.Tensor, **knobs: Any) -> int:
    sampler = Sampler(SamplingParams(max_tokens=1, **knobs), [0, 3], VOCAB, "cpu")
    return sampler.choose(logits.clone()).token


@pytest.mark.parametrize("temperature", [0.0, 5e-324, 1e-45, 9.9e-6])
def test_a_temperature_too_small_to_divide_by_decodes_greedily(temperature: float) -> None:
    assert sample(LOGITS * 1e30, temperature=temperature) == 1


def test_a_tiny_temperature_above_greedy_still_draws_from_finite_odds() -> None:
    picks = {sample(LOGITS * 1e30, temperature=1e-5, seed=s) for s in range(8)}
    assert picks == {1}  # the others' logits fall to -inf once the best's is subtracted


def test_top_p_keeps_the_most_likely_however_small() -> None:
    for top_p in (5e-324, 1e-46, 1e-6):
        assert {sample(LOGITS, temperature=2.0, top_p=top_p, seed=s) for s in range(8)} == {1}


@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_model_output_that_is_not_finite_is_a_generation_error(bad: float) -> None:
    logits = LOGITS.clone()
    logits[4] = bad
    for temperature in (0.0, 1.0):
        with pytest.raises(GenerationError, match="not finite"):
            sample(logits, temperature=temperature)
    masked = LOGITS.clone()
    masked[:4] = float("-inf")  # a grammar's mask is no fault
    assert sample(masked, temperature=0.0) == 5


@pytest.mark.parametrize(
    "knobs",
    [
        {"temperature": NAN},
        {"temperature": 1.0, "repetition_penalty": 1e-46},  # 0 in float32: a seen logit / 0
        {"temperature": 1.0, "frequency_penalty": INF},  # inf * a count of 0
        {"temperature": 1.0, "presence_penalty": -INF},
    ],
)
def test_knobs_past_validation_that_leave_no_distribution_say_so(knobs: dict[str, Any]) -> None:
    with pytest.raises(GenerationError, match="no next token can be drawn") as caught:
        sample(LOGITS, **knobs)
    assert caught.value.status == 500 and "temperature=" in caught.value.message


# -- the engine ------------------------------------------------------------------------------

POISONED = "poisoned"  # the model label of a sequence whose rows the model turns to NaN
GREEDY = SamplingParams(max_tokens=32, temperature=0)  # no eos: each runs all 32 steps
PROMPTS = ["Once upon a time", "The weather today", "1 2 3 4"]


class PoisoningEngine(Engine):
    """Turns the model's output NaN for sequences labelled `poisoned` from their third token,
    and notes, for every forward pass, the labels of its rows and of the batch it joins."""

    passes: list[tuple[list[str], list[str]]]

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        seqs: list[Sequence],
        **extra: Any,
    ) -> torch.Tensor:
        self.passes.append(([s.model for s in seqs], [s.model for s in self._active]))
        logits = super()._forward(ids, mask, positions, cache, seqs, **extra)
        for row, seq in enumerate(seqs):
            if seq.model == POISONED and len(seq.generated) >= 3:
                logits[row, -1] = NAN
        return logits


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Any:
    model, tokenizer = load_base(tiny_model, "cpu", torch.float32)
    engine = PoisoningEngine(model, tokenizer, "cpu", max_batch=16)
    engine.passes = []
    yield engine
    engine.stop()


async def outcome(
    events: AsyncIterator[Event], started: asyncio.Event | None = None
) -> tuple[str, int, BaseException | None]:
    """The text, the tokens and the error (None if it ended well) of one sequence; `started` is
    set at its first token."""
    parts, tokens = [], 0
    try:
        async for event in events:
            parts.append(event.text)
            tokens += len(event.tokens)
            if started is not None:
                started.set()
    except Exception as exc:
        return "".join(parts), tokens, exc
    return "".join(parts), tokens, None


def test_poisoned_sequences_end_alone_and_their_neighbours_decode_on(engine: Any) -> None:
    ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    alone = [asyncio.run(outcome(engine.generate(i, GREEDY, None, "innocent"))) for i in ids]
    assert all(error is None and tokens == 32 for _, tokens, error in alone)
    poisons = [
        ("knobs", SamplingParams(max_tokens=32, temperature=NAN)),
        ("knobs", SamplingParams(max_tokens=32, temperature=1.0, repetition_penalty=1e-46)),
        ("knobs", SamplingParams(max_tokens=32, temperature=1.0, frequency_penalty=INF)),
        (POISONED, GREEDY),  # fails at its fourth token, in a decode step beside the others
    ]

    async def together() -> tuple[list[Any], list[Any]]:
        started = [asyncio.Event() for _ in ids]
        innocent = [
            asyncio.create_task(outcome(engine.generate(i, GREEDY, None, "innocent"), s))
            for i, s in zip(ids, started, strict=True)
        ]
        await asyncio.gather(*(s.wait() for s in started))  # all decoding: now the poison
        poisoned = [engine.generate(ids[0], params, None, label) for label, params in poisons]
        failed = await asyncio.gather(*(outcome(p) for p in poisoned))
        return list(await asyncio.gather(*innocent)), list(failed)

    engine.passes.clear()
    innocent, poisoned = asyncio.run(together())
    assert innocent == alone
    for (label, _), (_, tokens, error) in zip(poisons, poisoned, strict=True):
        assert isinstance(error, GenerationError), (label, error)
        assert tokens == (3 if label == POISONED else 0)
    # each poisoned sequence was in a forward pass while the innocent ones were in the batch
    assert any("knobs" in rows and "innocent" in batch for rows, batch in engine.passes)
    assert any(POISONED in rows and "innocent" in rows for rows, _ in engine.passes)
