"""Requests that arrive together are decoded together; leaving early frees a slot."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from llama_post import AsyncLlamaPostClient
from llama_post.apis.inference import ChatCompletion, ChatCompletionRequest, ChatMessage
from tests.support import TINY, distribution, running
from tests.tiny import build_tiny_model

HI = [ChatMessage(role="user", content="Tell me a long story.")]


def test_a_long_stream_does_not_hold_up_a_short_request(tmp_path: Path, tiny_model: Path) -> None:
    async def scenario() -> tuple[int, str | None]:
        client = await AsyncLlamaPostClient.from_config(distribution(tmp_path, tiny_model), {})
        try:
            long = await client.inference.chat_completion(
                ChatCompletionRequest(
                    model=TINY, messages=HI, max_tokens=200, temperature=0, stream=True
                )
            )
            assert not isinstance(long, ChatCompletion)
            chunks = aiter(long)
            await anext(chunks)
            short = asyncio.create_task(
                client.inference.chat_completion(
                    ChatCompletionRequest(model=TINY, messages=HI, max_tokens=3, temperature=0)
                )
            )
            received, finish = 0, None
            while not short.done():
                chunk = await anext(chunks)
                received += 1
                finish = chunk.choices[0].finish_reason
            async for chunk in chunks:
                finish = chunk.choices[0].finish_reason if chunk.choices else finish
            return received, finish
        finally:
            await client.close()

    received, finish = asyncio.run(scenario())
    assert finish == "length"  # the long one really ran to 200 tokens
    assert received < 50, f"the short request waited for {received} chunks of the long stream"


def test_a_client_that_disconnects_frees_its_slot(
    tmp_path: Path, models_dir: Path, tokenizer: Any
) -> None:
    # A long context, so the abandoned request would take seconds to run to its end.
    long_model = models_dir / "tiny-long"
    if not long_model.exists():
        build_tiny_model(long_model, tokenizer, context=2048)
    config = distribution(tmp_path, long_model, inference={"max_batch_size": 1})
    with running(config, tmp_path) as server:
        body = {
            "model": TINY,
            "messages": [m.model_dump() for m in HI],
            "max_tokens": 1900,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():  # up to the first generated text, then hang up
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get(
                    "content"
                ):
                    break
        started = time.monotonic()
        quick = httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=30,
            json={"model": TINY, "messages": body["messages"], "max_tokens": 2},
        )
        assert quick.status_code == 200
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while "a request left after" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
    line = next(x for x in server.output().splitlines() if "a request left after" in x)
    generated = int(line.split("after ")[1].split(" of")[0])
    assert generated < 1900, line
