"""A training worker's `ModelScorer`: a `score_model` grader inside a job asks this server's
inference over HTTP (`RemoteClient`, through the route table), with the key the server granted
the job's attempt (`llama_post/distribution/worker_access.py`): scoped to inference, as the job's
owner. The key is read from the worker's environment once and taken out of it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llama_post.apis.inference.models import ChatCompletionRequest
from llama_post.graders import ModelScorer
from llama_post.remote import ROUTES, RemoteClient
from providers.jobs.folder import INFERENCE_KEY_ENV, INFERENCE_URL_ENV

SCORE_TIMEOUT_S = 300.0  # one answer of a scoring model, as the server's grader routes allow


def worker_scorer() -> ModelScorer | None:
    """The scorer of a worker the server granted inference; None for any other (a grader
    that calls no model)."""
    url = os.environ.get(INFERENCE_URL_ENV)
    key = os.environ.pop(INFERENCE_KEY_ENV, None)  # not inherited by what the worker starts
    if url is None:
        return None
    route = ROUTES["inference", "chat_completion"]

    def score(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        request = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, **sampling}
        )

        async def ask() -> Any:
            client = RemoteClient("this server", url, api_key=key, timeout=SCORE_TIMEOUT_S)
            try:
                return await client.call(route, request)
            finally:
                await client.close()

        answer = asyncio.run(ask())
        return str(answer["choices"][0]["message"]["content"] or "")

    return score
