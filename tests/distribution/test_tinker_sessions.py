"""`TinkerSessions` over a small in-memory trainer: a model's calls run in `seq_id` order
whatever order they arrive in, a call sent again with a `seq_id` already seen runs once, and a
call refused through its future does not hold up the calls after it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llama_post.apis.training_sessions import OptimStepRequest, OptimStepResult
from llama_post.apis.training_sessions.tinker import (
    TinkerAdamParams,
    TinkerOptimStep,
    TinkerRetrieveFuture,
)
from llama_post.distribution.tinker_sessions import TinkerSessions
from llama_post.errors import NotFoundError

MODEL = "ts-0123456789abcdef:train:0"


class Steps:
    """The one native call these tests make: each optimizer step, recorded by its rate."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    async def optim_step(self, model_id: str, request: OptimStepRequest) -> OptimStepResult:
        await asyncio.sleep(0.01)
        self.rates.append(request.adam.learning_rate)
        return OptimStepResult(step=len(self.rates), metrics={})


async def _result(tinker: TinkerSessions, request_id: str) -> dict[str, Any]:
    answer = await tinker.tinker_retrieve_future(TinkerRetrieveFuture(request_id=request_id))
    assert answer.media_type == "application/json"
    found: dict[str, Any] = json.loads(await answer.read())
    return found


def _step(seq_id: int, **given: Any) -> TinkerOptimStep:
    rate = TinkerAdamParams(learning_rate=seq_id / 10)
    return TinkerOptimStep(model_id=MODEL, seq_id=seq_id, adam_params=rate, **given)


def test_calls_run_in_seq_id_order_once_each() -> None:
    async def story() -> None:
        steps = Steps()
        tinker = TinkerSessions(steps, models=None, inference=lambda: None)  # type: ignore[arg-type]
        later = await tinker.tinker_optim_step(_step(2))
        first = await tinker.tinker_optim_step(_step(1))
        again = await tinker.tinker_optim_step(_step(1))  # the SDK's retry of the same call
        assert again.request_id == first.request_id != later.request_id
        assert (await _result(tinker, later.request_id))["type"] == "optim_step"
        assert steps.rates == [0.1, 0.2]  # seq 1 ran first, and once

        refused = await tinker.tinker_optim_step(_step(3, optimizer_params={"type": "dimuon"}))
        after = await tinker.tinker_optim_step(_step(4))
        failed = await _result(tinker, refused.request_id)
        assert failed["category"] == "user" and "optimizer_params" in failed["error"]
        assert "metrics" in await _result(tinker, after.request_id)
        assert steps.rates == [0.1, 0.2, 0.4]
        with pytest.raises(NotFoundError):
            await tinker.tinker_retrieve_future(TinkerRetrieveFuture(request_id="nope"))

    asyncio.run(asyncio.wait_for(story(), 30))
