"""Scale's `scale-llm-engine` client (0.0.0b45, in its own environment) against a real server
with keys on: files, fine-tunes, model endpoints, completions, batches and guided decoding, as
its users call them (`llm_engine_flow.py`)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx

from tests.compat.envs import client_python, run_flow
from tests.support import TINY, Server, create_key, distribution


def test_the_llm_engine_client_fine_tunes_and_completes(tmp_path: Path, tiny_model: Path) -> None:
    python = client_python("scale-llm-engine-0.0.0b45")
    server = Server(distribution(tmp_path, tiny_model) | {"auth": {"enabled": True}}, tmp_path)
    key = create_key(server.config, "alice")
    server.start(timeout=60)
    try:
        seen = json.loads(run_flow(python, "llm_engine_flow.py", server.url, key, TINY))
    finally:
        server.stop()
    assert seen["fine_tune"]["model"] == f"ft/{seen['fine_tune']['job']}"
    assert seen["completions"]["tokens"] >= 1
    assert seen["batch"]["outputs"] == 2, seen["batch"]
    assert set(seen["guided"]) == {"guided_choice", "guided_regex", "guided_json", "guided_grammar"}


def test_errors_are_llm_engine_details_and_basic_auth_is_a_key(
    tmp_path: Path, tiny_model: Path
) -> None:
    server = Server(distribution(tmp_path, tiny_model) | {"auth": {"enabled": True}}, tmp_path)
    key = create_key(server.config, "alice")
    server.start(timeout=60)
    basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    try:
        with httpx.Client(base_url=f"{server.url}/llm-engine/v1", timeout=60) as http:
            listed = http.get("/files", headers={"authorization": basic})
            missing = http.get("/llm/fine-tunes/llmft-nothing", headers={"x-api-key": key})
            bad = http.post(
                "/llm/completions-sync",
                params={"model_endpoint_name": TINY},
                json={"prompt": "Hi", "max_new_tokens": 2, "temperature": 0, "top_p": 7},
                headers={"x-api-key": key},
            )
            two = http.post(
                "/llm/completions-sync",
                params={"model_endpoint_name": TINY},
                json={
                    "prompt": "Hi",
                    "max_new_tokens": 2,
                    "temperature": 0,
                    "guided_regex": "a+",
                    "guided_choice": ["a"],
                },
                headers={"x-api-key": key},
            )
            stream = http.post(
                "/llm/completions-stream",
                params={"model_endpoint_name": TINY},
                json={"prompt": "Hi", "max_new_tokens": 2, "temperature": 0},
                headers={"x-api-key": key},
            )
            wrong = http.get("/files", headers={"authorization": "Basic bm9wZTo="})
    finally:
        server.stop()
    assert listed.status_code == 200 and listed.json() == {"files": []}
    assert missing.status_code == 404 and missing.json() == {
        "detail": "no fine-tune 'llmft-nothing'"
    }
    assert bad.status_code == 422 and "top_p" in bad.json()["detail"]
    assert two.status_code == 400 and "give one guided field" in two.json()["detail"]
    assert stream.status_code == 200 and "[DONE]" not in stream.text
    events = [json.loads(x[5:]) for x in stream.text.splitlines() if x.startswith("data:")]
    assert events[-1]["output"]["finished"] and events[-1]["output"]["num_completion_tokens"] == 2
    assert wrong.status_code == 401
