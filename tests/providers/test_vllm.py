"""remote::vllm when the upstream misbehaves: down at start, down later, slow, failing, refusing.

The upstream here is a small HTTP server on a loopback port that answers vLLM's routes the way
vLLM does and fails on demand; the stack runs in this process (the library client), so a test
sees both sides. What a well-behaved upstream does is the conformance suite's part.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llama_post import LlamaPostClient
from llama_post.distribution import models as registry_module
from llama_post.errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from tests.support import free_port

MODEL = "org/served"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# vLLM's answer to `echo` with `logprobs` and `max_tokens: 0`: the prompt, its first token unscored
SCORED = {
    "id": "cmpl-1", "object": "text_completion", "created": 1,
    "choices": [{
        "index": 0, "text": "a b c", "finish_reason": "length", "stop_reason": None,
        "logprobs": {
            "tokens": ["a", " b", " c"], "token_logprobs": [None, -1.5, -0.25],
            "top_logprobs": [None, {" b": -1.5, " x": -2.0}, {" c": -0.25, " y": -3.0}],
            "text_offset": [0, 1, 3],
        },
        "prompt_logprobs": [None, {"7": {"logprob": -1.5}}, {"8": {"logprob": -0.25}}],
    }],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}  # fmt: skip


@dataclass
class Upstream:
    """vLLM's routes, answering as vLLM does; `mode` makes the chat route fail."""

    port: int
    mode: str = "ok"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                cards = [
                    {
                        "id": MODEL,
                        "object": "model",
                        "root": "/elsewhere",
                        "parent": None,
                        "max_model_len": 128,
                    }
                ]
                cards += [
                    {"id": n, "root": p, "parent": MODEL} for n, p in upstream.adapters.items()
                ]
                self._send(200, {"object": "list", "data": cards})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                upstream.calls.append((self.path, body))
                if self.path == "/v1/load_lora_adapter":
                    upstream.adapters[body["lora_name"]] = body["lora_path"]
                    return self._text("Success: LoRA adapter added successfully.")
                if self.path == "/v1/unload_lora_adapter":
                    upstream.adapters.pop(body["lora_name"], None)
                    return self._text("Success: LoRA adapter removed successfully.")
                if upstream.mode == "slow":
                    time.sleep(3)
                if upstream.mode == "500":
                    return self._send(500, {"error": {"message": "engine dead", "code": 500}})
                if upstream.mode == "400":
                    message = "This model's maximum context length is 128 tokens."
                    return self._send(400, {"error": {"message": message, "param": "messages"}})
                if body["model"] not in (MODEL, *upstream.adapters):
                    return self._send(404, {"error": {"message": "The model does not exist."}})
                if self.path == "/v1/completions":
                    return self._send(200, {**SCORED, "model": body["model"]})
                self._send(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "ok ok"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                })  # fmt: skip

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _text(self, text: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream(free_port()).start()
    yield up
    up.stop()


def config(home: Path, url: str, **vllm: Any) -> dict[str, Any]:
    (home / "checkpoints").mkdir(parents=True, exist_ok=True)
    return {
        "distribution": "test",
        "storage_dir": str(home / "stack"),
        "providers": {
            "inference": [
                {
                    "provider_id": "vllm",
                    "provider_type": "remote::vllm",
                    "config": {
                        "base_url": f"{url}/v1",
                        "request_timeout": 1,
                        "max_retries": 1,
                        "adapter_dirs": [str(home / "checkpoints")],
                        **vllm,
                    },
                }
            ]
        },
    }


def library(run: dict[str, Any]) -> Any:
    """The stack in this process; its API attributes are made at start, so typed as Any."""
    return LlamaPostClient(run)


def adapter(home: Path, rank: int) -> str:
    folder = home / "checkpoints" / f"rank-{rank}"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return str(folder)


def test_an_upstream_that_is_down_at_start_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError) as raised:
        LlamaPostClient(config(tmp_path, url))
    assert url in str(raised.value) and "optional: true" in str(raised.value)


def test_an_optional_upstream_starts_degraded_and_serves_once_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "RETRY_LOAD_SECONDS", 0.0)
    port = free_port()
    run = config(tmp_path, f"http://127.0.0.1:{port}", optional=True)
    run["models"] = [
        {"model_id": MODEL, "source": {"type": "provider_model", "provider_model_id": MODEL}}
    ]
    with library(run) as client:
        health = client.inspect.health()
        assert health.status == "Degraded"
        assert health.providers[0].provider_id == "vllm"
        assert f"127.0.0.1:{port}" in (health.providers[0].message or "")
        with pytest.raises(UpstreamUnavailableError, match="provider 'vllm'"):
            client.inference.chat_completion(CHAT)

        up = Upstream(port).start()
        try:
            assert client.inspect.health().status == "OK"
            answer = client.inference.chat_completion(CHAT)
            assert answer.choices[0].message.content == "ok ok" and answer.model == MODEL
        finally:
            up.stop()


def test_models_are_registered_from_the_upstream(tmp_path: Path, upstream: Upstream) -> None:
    with library(config(tmp_path, upstream.url)) as client:
        model = client.models.get_model(MODEL)
        assert model.provider_id == "vllm" and model.context_length == 128
        assert model.weights is None  # vLLM's folder is not readable here
        with pytest.raises(NotFoundError, match="serves no base model 'org/other'"):
            client.models.register_model(
                {
                    "model_id": "other",
                    "source": {"type": "provider_model", "provider_model_id": "org/other"},
                }
            )
        with pytest.raises(InvalidRequestError, match=r"source\.type"):
            client.models.register_model(
                {"model_id": "local", "source": {"type": "huggingface", "path": str(tmp_path)}}
            )


def test_upstream_failures_are_clear_errors_never_hangs(tmp_path: Path, upstream: Upstream) -> None:
    with library(config(tmp_path, upstream.url)) as client:
        upstream.mode = "400"
        with pytest.raises(InvalidRequestError, match="maximum context length") as refused:
            client.inference.chat_completion(CHAT)
        assert refused.value.status == 400 and refused.value.param == "messages"
        upstream.mode = "500"
        with pytest.raises(UpstreamError, match="upstream answered 500: engine dead") as failed:
            client.inference.chat_completion(CHAT)
        assert failed.value.status == 502
        upstream.mode = "slow"
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError, match="within 1 s") as slow:
            client.inference.chat_completion(CHAT)
        assert slow.value.status == 504 and time.monotonic() - started < 2.5
        upstream.mode = "ok"
        assert client.inference.chat_completion(CHAT).choices[0].message.content == "ok ok"
        upstream.stop()
        with pytest.raises(UpstreamUnavailableError, match="tried 2 times") as down:
            client.inference.chat_completion(CHAT)
        assert down.value.status == 503
        assert client.inspect.health().status == "Degraded"


def test_adapters_are_hot_loaded_and_unloaded(tmp_path: Path, upstream: Upstream) -> None:
    with library(config(tmp_path, upstream.url, max_lora_rank=8)) as client:
        path = adapter(tmp_path, 8)
        made = client.models.register_model(
            {"model_id": "ft/a", "source": {"type": "adapter", "path": path, "base_model": MODEL}}
        )
        assert made.kind == "adapter" and made.provider_id == "vllm"
        assert upstream.adapters == {"ft/a": path}
        assert client.inference.chat_completion({**CHAT, "model": "ft/a"}).model == "ft/a"

        upstream.adapters.clear()  # vLLM restarted: runtime adapters are gone; loaded again
        assert client.inference.chat_completion({**CHAT, "model": "ft/a"}).model == "ft/a"
        assert upstream.adapters == {"ft/a": path}

        client.models.unregister_model("ft/a")
        assert upstream.adapters == {}
        assert upstream.calls[-1][0] == "/v1/unload_lora_adapter"


def test_a_rank_above_the_upstreams_limit_is_refused_before_sending(
    tmp_path: Path, upstream: Upstream
) -> None:
    with library(config(tmp_path, upstream.url, max_lora_rank=8)) as client:
        source = {"type": "adapter", "path": adapter(tmp_path, 16), "base_model": MODEL}
        with pytest.raises(InvalidRequestError, match=r"rank is 16.* up to 8") as refused:
            client.models.register_model({"model_id": "ft/big", "source": source})
        assert refused.value.param == "source.path"
        assert upstream.calls == []
        outside = {"type": "adapter", "path": str(tmp_path), "base_model": MODEL}
        with pytest.raises(NotFoundError, match=r"source\.path: .* is outside"):
            client.models.register_model({"model_id": "ft/outside", "source": outside})
        assert upstream.calls == []


def test_constraints_reach_the_upstream_in_vllms_shape(tmp_path: Path, upstream: Upstream) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with library(config(tmp_path, upstream.url)) as client:
        client.inference.chat_completion({**CHAT, "structured_outputs": {"json": schema}})
        assert upstream.calls[-1][1]["structured_outputs"] == {"json": schema}
        named = {"name": "a", "schema": schema, "strict": True}
        response_format = {"type": "json_schema", "json_schema": named}
        client.inference.chat_completion({**CHAT, "response_format": response_format})
        assert upstream.calls[-1][1]["response_format"] == response_format
        client.inference.chat_completion({**CHAT, "structured_outputs": {"grammar": "start: /a/"}})
        assert upstream.calls[-1][1]["structured_outputs"] == {"grammar": "start: /a/"}


def test_prompt_scoring_is_passed_through_as_vllm_answers_it(
    tmp_path: Path, upstream: Upstream
) -> None:
    """lm-eval's log-likelihood requests (echo, logprobs, max_tokens 0, token-id batches) reach
    vLLM as sent, and its answer, the first prompt token's null logprob included, comes back."""
    with library(config(tmp_path, upstream.url)) as client:
        asked = {"prompt": [[5, 7, 8]], "echo": True, "logprobs": 1, "max_tokens": 0}
        answer = client.inference.completion({"model": MODEL, "temperature": 0, **asked})
        path, sent = upstream.calls[-1]
        assert path == "/v1/completions" and {k: sent[k] for k in asked} == asked
        logprobs = answer.choices[0].logprobs
        assert logprobs.model_dump() == SCORED["choices"][0]["logprobs"]  # type: ignore[index]
        assert answer.choices[0].text == "a b c" and answer.model == MODEL
