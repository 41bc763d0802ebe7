"""The grader routes of PostTraining (`/v1/post-training/graders/run|validate` and OpenAI's
`/v1/fine_tuning/alpha/graders/run|validate`), served once by the stack for every provider.

A grader is built with `llama_post.graders.GraderRunner` (what training workers use too) and run
in a thread, as the caller: a `score_model` grader's model is looked up through the guarded
Models API (another owner's model is a 400 naming `grader.model`, as one that does not exist)
and called through the guarded Inference API from that thread, on the server's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from llama_post.apis.inference import Inference
from llama_post.apis.inference.models import ChatCompletion, ChatCompletionRequest
from llama_post.apis.models import Models
from llama_post.apis.post_training.graders import (
    Grader,
    GraderRunErrors,
    GraderRunMetadata,
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
    MultiGrader,
    ScoreModelGrader,
)
from llama_post.errors import InvalidRequestError, NotFoundError
from llama_post.graders import GradeResult, GraderRunner, GraderSettings, ModelScorer, Sample

SCORE_TIMEOUT_S = 300.0  # one answer of a scoring model


class GraderService:
    """`inference` is looked up when needed: the stack starts post-training before inference."""

    def __init__(
        self, settings: GraderSettings, models: Models, inference: Callable[[], Inference | None]
    ) -> None:
        self.settings = settings
        self.models = models
        self.inference = inference

    async def validate_grader(self, request: GraderValidateRequest) -> GraderValidateResponse:
        await self.runner(request.grader)
        return GraderValidateResponse(grader=request.grader)

    async def run_grader(self, request: GraderRunRequest) -> GraderRunResponse:
        runner = await self.runner(request.grader)
        sample = Sample.of(request.model_sample)
        started = time.perf_counter()
        result = await asyncio.to_thread(runner.grade, request.item or {}, sample)
        return _response(request.grader, result, time.perf_counter() - started)

    async def runner(self, grader: Grader, where: str = "grader") -> GraderRunner:
        """`grader`, checked (as the caller: its scoring model must be one it may use), with
        a scorer calling the Inference API back on this loop. `where` is its place in the
        request, which errors name."""
        for at, scoring in _score_models(grader, where):
            try:
                await self.models.get_model(scoring.model)
            except NotFoundError as e:
                raise InvalidRequestError(
                    f"{at}.model: no model {scoring.model!r} is served here (GET /v1/models)",
                    param=f"{at}.model",
                ) from e
        scorer = self._scorer(asyncio.get_running_loop())
        return await asyncio.to_thread(
            functools.partial(GraderRunner, grader, self.settings, scorer, where=where)
        )

    def _scorer(self, loop: asyncio.AbstractEventLoop) -> ModelScorer | None:
        inference = self.inference()
        if inference is None:
            return None

        def score(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
            request = ChatCompletionRequest.model_validate(
                {"model": model, "messages": messages, **sampling}
            )
            call = asyncio.run_coroutine_threadsafe(_chat(inference, request), loop)
            return call.result(timeout=SCORE_TIMEOUT_S)

        return score


async def _chat(inference: Inference, request: ChatCompletionRequest) -> str:
    answer = await inference.chat_completion(request)
    assert isinstance(answer, ChatCompletion)  # not a stream: `stream` is unset
    return answer.choices[0].message.content


def _score_models(grader: Grader, where: str) -> Iterator[tuple[str, ScoreModelGrader]]:
    if isinstance(grader, ScoreModelGrader):
        yield where, grader
    if isinstance(grader, MultiGrader):
        for name, sub in grader.graders.items():
            if isinstance(sub, ScoreModelGrader):
                yield f"{where}.graders.{name}", sub


# OpenAI's flags by what failed (`GradeResult.error_kind`)
FLAGS = {
    "invalid_variable": "invalid_variable_error",
    "formula": "formula_parse_error",
    "model_parse": "model_grader_parse_error",
    "model_server": "model_grader_server_error",
    "python_runtime": "python_grader_runtime_error",
    "python_server": "python_grader_server_error",
    "unresponsive": "unresponsive_reward_error",
    "other": "other_error",
}


def _errors(result: GradeResult) -> GraderRunErrors:
    if result.error is None:
        return GraderRunErrors()
    flags: dict[str, Any] = {FLAGS[result.error_kind or "other"]: True, "message": result.error}
    if result.error_kind == "model_server":
        flags["model_grader_server_error_details"] = result.error
    if result.error_kind == "python_runtime":
        flags["python_grader_runtime_error_details"] = result.error
    if result.error_kind == "python_server":
        flags["python_grader_server_error_type"] = "killed"
    return GraderRunErrors(**flags)


def _response(grader: Grader, result: GradeResult, seconds: float) -> GraderRunResponse:
    return GraderRunResponse(
        reward=result.score,
        sub_rewards=result.sub_scores,
        metadata=GraderRunMetadata(
            name=grader.name,
            type=grader.type,
            errors=_errors(result),
            execution_time=seconds,
            scores=result.sub_scores or {grader.name: result.score},
        ),
    )
