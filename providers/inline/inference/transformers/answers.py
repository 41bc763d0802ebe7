"""The API's answers from the engine's events: usage, logprobs (by token text, or by id as
vLLM's `return_tokens_as_token_ids`), a completion's choices and a prompt's logprobs."""

from __future__ import annotations

import secrets
import time
from typing import Any

from llama_post.apis.inference import (
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    PromptLogprob,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from providers.inline.inference.transformers.engine import Event, TokenInfo


def usage(last: Event) -> Usage:
    return Usage(
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        total_tokens=last.prompt_tokens + last.completion_tokens,
    )


def chat_logprobs(tokens: list[TokenInfo]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=t.text,
                logprob=t.logprob or 0.0,
                bytes=list(t.text.encode()),
                top_logprobs=[
                    TopLogprob(token=s, logprob=lp, bytes=list(s.encode())) for s, lp in t.top
                ],
            )
            for t in tokens
        ]
    )


def completion_logprobs(
    tokens: list[TokenInfo], offset: int, as_ids: bool = False
) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for t in tokens:
        out.tokens.append(f"token_id:{t.id}" if as_ids else t.text)
        out.token_logprobs.append(t.logprob or 0.0)
        top = [(f"token_id:{i}", lp) for i, lp in t.top_ids] if as_ids else t.top
        out.top_logprobs.append(dict(top))
        out.text_offset.append(offset)
        offset += len(t.text)
    return out


def completion(
    request: SamplingFields, results: list[tuple[int, str, list[TokenInfo], Event]]
) -> Completion:
    want = getattr(request, "logprobs", None) is not None
    ids = getattr(request, "return_token_ids", False)
    as_ids = getattr(request, "return_tokens_as_token_ids", False)
    choices = [
        CompletionChoice(
            index=i,
            text=text,
            finish_reason=last.finish_reason,
            logprobs=completion_logprobs(tokens, 0, as_ids) if want else None,
            token_ids=[t.id for t in tokens] if ids else None,
        )
        for i, text, tokens, last in results
    ]
    prompt = sum(r[3].prompt_tokens for r in results)
    completion = sum(r[3].completion_tokens for r in results)
    return Completion(
        id=f"cmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=request.model,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ),
    )


def prompt_logprobs(
    found: list[dict[int, tuple[float, int]] | None], decode: Any
) -> list[dict[str, PromptLogprob] | None]:
    """The engine's prompt logprobs (`Engine.prompt_logprobs`), as vLLM gives them."""
    return [
        None
        if at is None
        else {
            str(i): PromptLogprob(logprob=lp, rank=rank, decoded_token=decode([i]))
            for i, (lp, rank) in at.items()
        }
        for at in found
    ]
