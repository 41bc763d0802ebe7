"""`score_model`: a model served by this stack reads the rendered messages and answers a score.

The runner does not know how the model is reached: it is handed a `ModelScorer` (the server's
Inference API, or whatever a training worker has). The first number in the answer is the score;
an answer without one, or with one outside `range`, is that sample's error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from jinja2 import Template

from llama_post.apis.post_training.graders import ScoreModelGrader
from llama_post.errors import InvalidRequestError
from llama_post.graders.templates import GradingError, compile_template, render

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class ModelScorer(Protocol):
    """How `score_model` reaches a model: the answer's text to `messages` (OpenAI chat
    messages, `role` and `content`) with `sampling` (`max_tokens`, `temperature`, `top_p`,
    `seed`, those the grader sets)."""

    def __call__(
        self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]
    ) -> str: ...


def parse_score(answer: str, low: float, high: float) -> float:
    found = NUMBER.search(answer)
    if found is None:
        raise GradingError(
            f"the scoring model's answer holds no number: {answer[:200]!r}", "model_parse"
        )
    score = float(found.group())
    if not low <= score <= high:
        raise GradingError(
            f"the scoring model answered {score}, outside the range [{low}, {high}]", "model_parse"
        )
    return score


class ScoreModel:
    def __init__(self, grader: ScoreModelGrader, where: str, scorer: ModelScorer | None) -> None:
        low, high = grader.range if grader.range is not None else (0.0, 1.0)
        if not low < high:
            raise InvalidRequestError(
                f"{where}.range: [{low}, {high}] is empty; give [low, high] with low < high",
                param=f"{where}.range",
            )
        sampling = grader.sampling_params
        if sampling is not None and sampling.reasoning_effort is not None:
            field = f"{where}.sampling_params.reasoning_effort"
            raise InvalidRequestError(
                f"{field}: the models served here do not take a reasoning effort; leave it out",
                param=field,
            )
        self.messages: list[tuple[str, list[Callable[[dict[str, Any]], str]]]] = []
        for i, message in enumerate(grader.input):
            parts = self._parts(message.content, f"{where}.input[{i}]")
            # OpenAI's `developer` is the `system` of the chat templates served here
            self.messages.append(("system" if message.role == "developer" else message.role, parts))
        self.sampling = _sampling(grader)
        self.model, self.low, self.high = grader.model, low, high
        self.scorer = scorer

    @staticmethod
    def _parts(content: Any, field: str) -> list[Callable[[dict[str, Any]], str]]:
        if isinstance(content, str):
            return [_renderer(compile_template(content, f"{field}.content"), f"{field}.content")]
        return [
            _renderer(
                compile_template(p.text, f"{field}.content[{j}].text"), f"{field}.content[{j}]"
            )
            for j, p in enumerate(content)
        ]

    def score(self, scope: dict[str, Any]) -> float:
        if self.scorer is None:
            raise GradingError("no model can be reached to score with here", "model_server")
        messages = [
            # OpenAI's `developer` is the `system` of the chat templates served here
            {
                "role": "system" if role == "developer" else role,
                "content": "".join(p(scope) for p in parts),
            }
            for role, parts in self.messages
        ]
        try:
            answer = self.scorer(self.model, messages, dict(self.sampling))
        except Exception as e:
            raise GradingError(f"{self.model} could not score: {e}", "model_server") from e
        return parse_score(answer, self.low, self.high)


def _renderer(template: Template, field: str) -> Callable[[dict[str, Any]], str]:
    return lambda scope: render(template, field, scope)


def _sampling(grader: ScoreModelGrader) -> dict[str, Any]:
    given = grader.sampling_params
    if given is None:
        return {}
    knobs = {
        "max_tokens": given.max_completions_tokens,
        "temperature": given.temperature,
        "top_p": given.top_p,
        "seed": given.seed,
    }
    return {k: v for k, v in knobs.items() if v is not None}
