"""The embedded default with the real SmolLM2-135M-Instruct, through the real server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import Server

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

pytestmark = pytest.mark.slow


def test_run_yaml_serves_smollm2_and_converts_it_once(tmp_path: Path) -> None:
    env = {"LLAMA_POST_HOME": str(tmp_path / "home")}
    server = Server(ROOT / "run.yaml", tmp_path, env=env).start(timeout=300)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model=SMOLLM2,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=30,
            temperature=0,
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        model = httpx.get(f"{server.url}/v1/models/{SMOLLM2}").json()
        assert model["context_length"] == 8192 and model["has_chat_template"]
        assert 130_000_000 < model["parameter_count"] < 140_000_000
    finally:
        assert server.stop() == 0
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in server.output()

    again = Server(ROOT / "run.yaml", tmp_path, env=env)
    started = time.monotonic()
    again.start(timeout=120)
    try:
        assert time.monotonic() - started < 30, "a second start should load the cached folder"
        assert "converting" not in again.output()
    finally:
        again.stop()
