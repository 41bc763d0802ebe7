"""One request never fails another: eight greedy completions are decoded together on a real server
while poisoned requests join their batch, each sampling knob at its extremes, with the values that
once made sampling NaN (JSON's NaN and Infinity too). A poisoned request is refused with a 4xx
naming its knob before anything is decoded, or answered as its extreme means (a temperature too
small to divide by decodes greedily, as vLLM's does); each of the eight says exactly what it says
alone. (tests/providers/test_transformers_isolation.py fails sequences inside the engine.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TINY, Server, distribution, parse_sse

NAN, INF = float("nan"), float("inf")
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
INNOCENT = [f"Story {i}: once upon a time" for i in range(8)]
LONG = 96  # tokens each innocent request decodes, while the poisoned ones come and go
SHORT = 8
GREEDY = {"temperature": 0, "ignore_eos": True}
BODIES = {  # a poisoned request before its poison; ignore_eos: always SHORT tokens
    COMPLETIONS: {"model": TINY, "prompt": "Poison", "max_tokens": SHORT, "ignore_eos": True},
    CHAT: {
        "model": TINY,
        "messages": [{"role": "user", "content": "Poison"}],
        "max_tokens": SHORT,
        "ignore_eos": True,
    },
}

REFUSED: list[tuple[str, str, Any]] = [  # a 4xx naming the knob, before any decoding
    *[(COMPLETIONS, "temperature", v) for v in (NAN, INF, -INF, -1e-45, 2.0000001)],
    *[(COMPLETIONS, "top_p", v) for v in (0, -0.0, NAN, -INF, INF, 1.0000001)],
    *[(COMPLETIONS, "top_k", v) for v in (0, -1)],
    *[(COMPLETIONS, "presence_penalty", v) for v in (NAN, INF, -2.5)],
    *[(COMPLETIONS, "frequency_penalty", v) for v in (NAN, -INF, 2.5)],
    *[(COMPLETIONS, "repetition_penalty", v) for v in (0, 1e-45, 0.09, NAN, INF, 10.5)],
    *[(COMPLETIONS, "seed", v) for v in (2**63, 2**64, -(2**63) - 1)],
    *[(COMPLETIONS, "max_tokens", v) for v in (0, 10**30)],
    *[(COMPLETIONS, "logprobs", v) for v in (-1, 21)],
    (COMPLETIONS, "n", 2),
    (COMPLETIONS, "logit_bias", {"0": INF}),  # knobs vLLM has and these models do not
    (COMPLETIONS, "min_p", 1.0),
    (CHAT, "temperature", NAN),
    (CHAT, "repetition_penalty", 1e-45),
    *[(CHAT, "top_logprobs", v) for v in (-1, 21)],
    *[(CHAT, "max_completion_tokens", v) for v in (0, 10**30)],
]
GREEDY_AT_THE_LIMIT: list[tuple[str, dict[str, Any]]] = [  # the greedy answer
    (COMPLETIONS, {"temperature": 1e-45}),  # once NaN, and the batch failed with it
    (COMPLETIONS, {"temperature": 5e-324}),
    (COMPLETIONS, {"temperature": 9.9e-6, "logprobs": 20}),
    (COMPLETIONS, {"temperature": 2.0, "top_k": 1}),
    (COMPLETIONS, {"temperature": 2.0, "top_p": 5e-324}),  # 0 in float32: once NaN too
    (CHAT, {"temperature": 1e-45, "logprobs": True, "top_logprobs": 20}),
]
SAMPLED: list[tuple[str, dict[str, Any]]] = [  # an answer of SHORT tokens
    (COMPLETIONS, {"temperature": 1e-5, "seed": -(2**63)}),
    (COMPLETIONS, {"temperature": 2.0, "top_k": 10**30, "seed": 2**63 - 1}),
    (COMPLETIONS, {"temperature": 2.0, "top_p": 1.0, "logprobs": 0}),
    (
        COMPLETIONS,
        {
            "temperature": 2.0,
            "presence_penalty": 2,
            "frequency_penalty": 2,
            "repetition_penalty": 10,
        },
    ),
    (
        COMPLETIONS,
        {
            "temperature": 2.0,
            "presence_penalty": -2,
            "frequency_penalty": -2,
            "repetition_penalty": 0.1,
        },
    ),
    (CHAT, {"temperature": 2.0, "top_p": 1e-300, "top_k": 10**30, "repetition_penalty": 0.1}),
]


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[httpx.Client]:
    """A client of a server whose engine takes every request of the test into one batch."""
    home = tmp_path_factory.mktemp("poisoned")
    inference = {"max_batch_size": 64, "torch_threads": 1}  # no OpenMP barriers on a busy box
    server = Server(distribution(home, tiny_model, inference=inference), home).start(timeout=120)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
    server.stop()


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """`body` as Python's json module writes it, NaN and Infinity included (httpx refuses them)."""
    headers = {"content-type": "application/json"}
    return http.post(path, content=json.dumps(body), headers=headers)


def _answer(path: str, response: httpx.Response) -> tuple[str, str | None]:
    """The text of a 200 answer, streamed or not, and how it finished; a failure (a status, or an
    error event in a started stream) fails the test with the error."""
    assert response.status_code == 200, response.text
    if not response.headers["content-type"].startswith("text/event-stream"):
        (choice,) = response.json()["choices"]
        text = choice["message"]["content"] if path == CHAT else choice["text"]
        return text, choice["finish_reason"]
    events = parse_sse(response.content)
    assert events[-1] == "[DONE]"
    parts, finish = [], None
    for event in events[:-1]:
        assert "error" not in event, event
        for choice in event["choices"]:
            parts.append((choice["delta"].get("content") if path == CHAT else choice["text"]) or "")
            finish = choice["finish_reason"] or finish
    return "".join(parts), finish


def _innocent(http: httpx.Client, prompt: str, started: threading.Event) -> tuple[str, float]:
    """A greedy stream of LONG tokens: its text, and when it ended. `started` is set at its first
    text, when it is in the engine's batch."""
    body = {"model": TINY, "prompt": prompt, "max_tokens": LONG, **GREEDY, "stream": True}
    parts = []
    with http.stream("POST", COMPLETIONS, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line.removeprefix("data: "))
                assert "error" not in event, event  # what the batch's failure looked like
                parts.append(event["choices"][0]["text"])
                started.set()
    return "".join(parts), time.monotonic()


def _cases() -> list[tuple[str, dict[str, Any], str, bool]]:
    """(route, knobs, what is expected, streamed), each streamed and not: first those that reach
    the engine, so that they are decoded beside the innocent requests, then those refused."""
    cases = [(path, knobs, "greedy") for path, knobs in GREEDY_AT_THE_LIMIT]
    cases += [(path, knobs, "sampled") for path, knobs in SAMPLED]
    cases += [(path, {knob: value}, "refused") for path, knob, value in REFUSED]
    return [(*case, stream) for case in cases for stream in (False, True)]


def test_poisoned_requests_fail_alone_and_the_batch_they_join_is_untouched(
    http: httpx.Client,
) -> None:
    def solo(path: str, body: dict[str, Any]) -> str:
        return _answer(path, _post(http, path, body))[0]

    alone = [
        solo(COMPLETIONS, {"model": TINY, "prompt": p, "max_tokens": LONG, **GREEDY})
        for p in INNOCENT
    ]
    greedy = {path: solo(path, {**BODIES[path], **GREEDY}) for path in BODIES}

    def poisoned(path: str, knobs: dict[str, Any], stream: bool) -> tuple[httpx.Response, float]:
        response = _post(http, path, {**BODIES[path], **knobs, "stream": stream})
        return response, time.monotonic()

    started = [threading.Event() for _ in INNOCENT]
    with ThreadPoolExecutor(len(INNOCENT) + 32) as pool:
        innocent = [
            pool.submit(_innocent, http, prompt, event)
            for prompt, event in zip(INNOCENT, started, strict=True)
        ]
        assert all(event.wait(60) for event in started), "the innocent requests did not start"
        sent = [(case, pool.submit(poisoned, *case[:2], case[3])) for case in _cases()]
        answers = [(case, *future.result()) for case, future in sent]
        innocent_ends = [future.result() for future in innocent]

    assert [text for text, _ in innocent_ends] == alone
    for (path, knobs, expected, stream), response, _ in answers:
        where = (path, knobs, "stream" if stream else "json")
        if expected == "refused":
            assert 400 <= response.status_code < 500, (where, response.text)
            (knob,) = knobs
            assert response.json()["error"]["param"] == knob, (where, response.text)
            continue
        text, finish = _answer(path, response)
        assert finish == "length", where
        if expected == "greedy":
            assert text == greedy[path], where
    # the engine decoded the answered ones while the eight were still decoding
    last_answered = max(done for _, response, done in answers if response.status_code == 200)
    assert last_answered < min(end for _, end in innocent_ends)
