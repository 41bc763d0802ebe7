"""The engine's events shaped as OpenAI's responses: texts gathered, logprobs, usage, and what
`echo` puts before a completion (its prompt, and the prompt's tokens scored)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

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


@dataclass
class Collected:
    """One sequence's events, gathered."""

    text: str
    tokens: list[TokenInfo]
    last: Event
    prompt: list[TokenInfo] = field(default_factory=list)  # scored, where it was asked


@dataclass
class Echo:
    """What `echo` puts before a choice's own text and tokens."""

    text: str
    tokens: list[TokenInfo]


async def collect(events: AsyncIterator[Event]) -> Collected:
    text, tokens, last, prompt = [], [], None, []
    async for event in events:
        text.append(event.text)
        tokens += event.tokens
        prompt += event.prompt or []
        last = event
    assert last is not None
    return Collected("".join(text), tokens, last, prompt)


async def merge(streams: list[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    queue: asyncio.Queue[tuple[int, Event | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Event]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        except Exception as exc:
            await queue.put((index, exc))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


def usage_of(last: Event) -> Usage:
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
    tokens: list[TokenInfo], offset: int = 0, as_ids: bool = False
) -> CompletionLogprobs:
    """OpenAI's legacy shape; a token without a logprob (an echoed prompt's first) has null.
    `as_ids`: tokens named `token_id:<id>` (vLLM's `return_tokens_as_token_ids`)."""
    out = CompletionLogprobs()
    for t in tokens:
        out.tokens.append(f"token_id:{t.id}" if as_ids else t.text)
        out.token_logprobs.append(t.logprob)
        top = [(f"token_id:{i}", lp) for i, lp in t.top_ids] if as_ids else t.top
        out.top_logprobs.append(None if t.logprob is None else dict(top))
        out.text_offset.append(offset)
        offset += len(t.text)
    return out


def completion_choice(
    index: int,
    text: str,
    tokens: list[TokenInfo],
    finish_reason: str | None,
    echo: Echo | None,
    logprobs: bool,
    token_ids: bool = False,
    as_ids: bool = False,
) -> CompletionChoice:
    """One choice (or a streamed chunk of it), its echo before it."""
    ids = [t.id for t in tokens] if token_ids else None
    if echo is not None:
        text, tokens = echo.text + text, echo.tokens + tokens
    return CompletionChoice(
        index=index,
        text=text,
        finish_reason=finish_reason,
        logprobs=completion_logprobs(tokens, 0, as_ids) if logprobs else None,
        token_ids=ids,
    )


def completion(
    request: SamplingFields, results: list[Collected], echoes: list[str] | None = None
) -> Completion:
    """The response to a completion (a batch's is one per prompt): with `echoes`, each choice
    starts with its prompt's text, and its logprobs with the prompt's tokens scored."""
    want = getattr(request, "logprobs", None) is not None
    choices = [
        completion_choice(
            i,
            got.text,
            got.tokens,
            got.last.finish_reason,
            None if echoes is None else Echo(echoes[i], got.prompt),
            want,
            getattr(request, "return_token_ids", False),
            getattr(request, "return_tokens_as_token_ids", False),
        )
        for i, got in enumerate(results)
    ]
    prompt = sum(r.last.prompt_tokens for r in results)
    generated = sum(r.last.completion_tokens for r in results)
    return Completion(
        id=f"cmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=request.model,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated
        ),
    )


def prompt_logprobs(
    found: list[dict[int, tuple[float, int]] | None], decode: Callable[[list[int]], str]
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
