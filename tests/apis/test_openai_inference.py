"""The official openai SDK, unchanged, against the real server: chat, streams, completions,
models, and errors in OpenAI's envelope."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import TINY, Server

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_chat_and_its_stream(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=TINY,
        messages=HI,
        max_tokens=10,
        temperature=0,
        seed=1,
    )
    assert answer.object == "chat.completion" and answer.usage is not None
    text = answer.choices[0].message.content
    assert isinstance(text, str)

    stream = client.chat.completions.create(
        model=TINY,
        messages=HI,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage is not None and answer.usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_completions_and_extra_knobs(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=TINY,
        prompt="Once upon",
        max_tokens=8,
        temperature=0,
        logprobs=2,
        extra_body={"top_k": 5},
    )
    assert result.object == "text_completion"
    assert result.choices[0].logprobs is not None and result.usage is not None
    assert len(result.choices[0].logprobs.tokens or []) == result.usage.completion_tokens

    streamed = client.completions.create(
        model=TINY, prompt="Once upon", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == result.choices[0].text


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert TINY in ids
    assert client.models.retrieve(TINY).id == TINY


def test_errors_arrive_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope/nope", messages=HI)
    assert missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=TINY, prompt="word " * 400)
    assert "context is 256 tokens" in long.value.message
    with pytest.raises(openai.UnprocessableEntityError) as hot:
        client.chat.completions.create(model=TINY, messages=HI, temperature=9)
    assert hot.value.param == "temperature"
