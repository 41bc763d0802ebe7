"""Constrained and free sequences decoded in the same batch of the transformers engine: each
constrained row is masked alone, so the free one says what it says when decoded by itself."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from providers.inline.inference.transformers.engine import Engine, Event
from providers.inline.inference.transformers.guided import Constraint, Grammars
from providers.inline.inference.transformers.loading import load_base
from providers.inline.inference.transformers.sampling import SamplingParams

REGEX = r"[a-z]{2,6}-[0-9]{2}"


class RecordingEngine(Engine):
    """Notes, for every decode step, which of its rows were constrained."""

    steps: list[list[bool]]

    def _decode(self) -> None:
        self.steps.append([s.guide is not None for s in self._active])
        super()._decode()


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Any:
    model, tokenizer = load_base(tiny_model, "cpu", torch.float32)
    engine = RecordingEngine(model, tokenizer, "cpu", max_batch=4)
    engine.steps = []
    yield engine
    engine.stop()


async def text_of(events: AsyncIterator[Event]) -> tuple[str, str | None]:
    parts, finish = [], None
    async for event in events:
        parts.append(event.text)
        finish = event.finish_reason
    return "".join(parts), finish


def test_a_constrained_and_a_free_sequence_share_the_batch(engine: Any) -> None:
    tokenizer = engine.tokenizer
    eos = frozenset({tokenizer.eos_token_id})
    grammars = Grammars(tokenizer, engine.vocab, eos)
    compiled = grammars.compile(Constraint("structured_outputs.regex", "regex", REGEX))
    free_prompt = tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    guided_prompt = tokenizer("Write a code:", add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_tokens=40, temperature=0, eos_ids=eos)

    def free() -> AsyncIterator[Event]:
        return engine.generate(free_prompt, params, None)  # type: ignore[no-any-return]

    async def together() -> list[tuple[str, str | None]]:
        guided = engine.generate(guided_prompt, params, None, guide=grammars.guide(compiled))
        return list(await asyncio.gather(text_of(free()), text_of(guided)))

    alone = asyncio.run(text_of(free()))
    engine.steps.clear()
    (free_text, free_finish), (guided_text, guided_finish) = asyncio.run(together())
    assert any(len(set(step)) == 2 for step in engine.steps), engine.steps  # shared steps
    assert (free_text, free_finish) == alone
    assert re.fullmatch(REGEX, guided_text) and guided_finish == "stop", guided_text
    assert not re.fullmatch(REGEX, free_text)
