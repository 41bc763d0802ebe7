"""Chat and completions against the tiny model, over HTTP and through the library client."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import TINY, Driver, Result

HI = [{"role": "user", "content": "Hello there, how are you?"}]


def chat(api: Driver, **body: Any) -> Result:
    return api.call("inference", "chat_completion", body={"model": TINY, "messages": HI, **body})


def complete(api: Driver, **body: Any) -> Result:
    return api.call("inference", "completion", body={"model": TINY, "prompt": "Once upon", **body})


def test_chat_completion(api: Driver) -> None:
    answer = chat(api, max_tokens=12, temperature=0)
    assert answer.status == 200, answer.body
    body = answer.body
    assert body["object"] == "chat.completion" and body["model"] == TINY
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(
        choice["message"]["content"], str
    )
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 12 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 12


def test_greedy_is_deterministic_and_streaming_says_the_same(api: Driver) -> None:
    first = chat(api, max_tokens=20, temperature=0).body
    again = chat(api, max_tokens=20, temperature=0).body
    assert first["choices"][0]["message"] == again["choices"][0]["message"]

    chunks = chat(
        api, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
    ).body
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == first["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == first["choices"][0]["finish_reason"]
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == first["usage"]


def test_the_same_seed_gives_the_same_sample(api: Driver) -> None:
    samples = [complete(api, max_tokens=16, temperature=1.0, seed=s).body for s in (7, 7, 8)]
    texts = [s["choices"][0]["text"] for s in samples]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_sampling_knobs_change_the_output(api: Driver) -> None:
    greedy = complete(api, max_tokens=24, temperature=0).body["choices"][0]["text"]
    for knobs in [
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"repetition_penalty": 5.0},
    ]:
        varied = complete(api, max_tokens=24, temperature=0, **knobs).body["choices"][0]["text"]
        assert varied != greedy, knobs
    narrow = [complete(api, max_tokens=8, temperature=1.5, top_k=1, seed=s).body for s in (1, 2)]
    assert (
        narrow[0]["choices"][0]["text"]
        == narrow[1]["choices"][0]["text"]
        == greedy[: len(narrow[0]["choices"][0]["text"])]
    )
    nucleus = complete(api, max_tokens=8, temperature=1.0, top_p=1e-6, seed=3).body
    assert greedy.startswith(nucleus["choices"][0]["text"])


def test_stop_sequences_end_the_text(api: Driver) -> None:
    greedy = complete(api, max_tokens=30, temperature=0).body["choices"][0]["text"]
    stop = greedy[10:14]
    assert stop.strip(), greedy
    stopped = complete(api, max_tokens=30, temperature=0, stop=[stop, "never-seen"]).body
    (choice,) = stopped["choices"]
    assert choice["text"] == greedy[: greedy.index(stop)]
    assert choice["finish_reason"] == "stop"

    streamed = complete(api, max_tokens=30, temperature=0, stop=stop, stream=True).body
    assert "".join(c["choices"][0]["text"] for c in streamed) == choice["text"]
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs(api: Driver) -> None:
    body = chat(api, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3).body
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for token in content:
        assert len(token["top_logprobs"]) == 3
        assert token["logprob"] <= 0
        assert token["top_logprobs"][0]["logprob"] == pytest.approx(token["logprob"])

    text = complete(api, max_tokens=4, temperature=0, logprobs=2).body["choices"][0]
    assert len(text["logprobs"]["tokens"]) == len(text["logprobs"]["top_logprobs"]) == 4
    assert all(len(alternatives) == 2 for alternatives in text["logprobs"]["top_logprobs"])


def test_several_prompts_and_batches_match_single_requests(api: Driver) -> None:
    prompts = ["The cat", "A long time ago in a galaxy", "1 2 3"]
    singles = [
        complete(api, prompt=p, max_tokens=10, temperature=0).body["choices"][0]["text"]
        for p in prompts
    ]
    listed = complete(api, prompt=prompts, max_tokens=10, temperature=0).body
    assert [c["text"] for c in sorted(listed["choices"], key=lambda c: c["index"])] == singles
    batch = api.call(
        "inference",
        "batch_completion",
        body={"model": TINY, "prompts": prompts, "max_tokens": 10, "temperature": 0},
    )
    assert [d["choices"][0]["text"] for d in batch.body["data"]] == singles

    chats = [[{"role": "user", "content": p}] for p in prompts]
    one_by_one = [
        api.call(
            "inference",
            "chat_completion",
            body={"model": TINY, "messages": m, "max_tokens": 10, "temperature": 0},
        ).body
        for m in chats
    ]
    together = api.call(
        "inference",
        "batch_chat_completion",
        body={"model": TINY, "messages_batch": chats, "max_tokens": 10, "temperature": 0},
    ).body
    assert [d["choices"][0]["message"] for d in together["data"]] == [
        o["choices"][0]["message"] for o in one_by_one
    ]


def test_bad_requests(api: Driver) -> None:
    missing = chat(api, model="no/such-model")
    assert missing.status == 404 and missing.error["param"] == "model"

    empty = chat(api, messages=[])
    assert empty.status == 422 and empty.error["param"] == "messages"  # the spec says min 1

    long_prompt = complete(api, prompt="word " * 400)
    assert long_prompt.status == 400
    message = long_prompt.error["message"]
    assert "the prompt is 401 tokens" in message and "context is 256 tokens" in message

    too_many = complete(api, prompt="hi", max_tokens=1000)
    assert too_many.status == 400 and too_many.error["param"] == "max_tokens"

    for field, value in [
        ("temperature", 3),
        ("top_p", 0),
        ("top_k", 0),
        ("max_tokens", 0),
        ("presence_penalty", -5),
        ("n", 2),
        ("top_logprobs", 50),
    ]:
        refused = chat(api, **{field: value})
        assert refused.status == 422, field
        assert refused.error["param"] == field, (field, refused.error)

    unsupported = chat(api, tools=[{"type": "function"}])
    assert unsupported.status == 422 and unsupported.error["param"] == "tools"
    bad_role = chat(api, messages=[{"role": "wizard", "content": "hi"}])
    assert bad_role.status == 422 and bad_role.error["param"] == "messages[0].role"


def test_a_prompt_of_token_ids_and_the_ids_sampled(api: Driver, tokenizer: Any) -> None:
    """As vLLM's: `prompt` as token ids, `return_token_ids`, `stop_token_ids` (Tinker's
    sampling is served this way)."""
    text = complete(api, max_tokens=6, temperature=0, return_token_ids=True).body["choices"][0]
    ids = tokenizer("Once upon", add_special_tokens=False)["input_ids"]
    same = complete(
        api, prompt=ids, max_tokens=6, temperature=0, return_token_ids=True, logprobs=0
    ).body["choices"][0]
    assert same["text"] == text["text"] and same["token_ids"] == text["token_ids"]
    assert len(same["logprobs"]["token_logprobs"]) == len(same["token_ids"]) == 6
    stop = same["token_ids"][2]
    stopped = complete(
        api, prompt=ids, max_tokens=6, temperature=0, return_token_ids=True, stop_token_ids=[stop]
    ).body["choices"][0]
    assert stopped["token_ids"] == same["token_ids"][: same["token_ids"].index(stop) + 1]
    assert stopped["finish_reason"] == "stop"
    refused = complete(api, prompt=[10**9], max_tokens=2)
    assert refused.status == 400 and "vocabulary" in refused.error["message"], refused.body
