"""The official tinker SDK (0.38.0, in its own environment) drives llama-post's runs and
checkpoints through its RestClient, with llama-post's keys: see `tinker_flow.py`."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.compat.envs import client_python, run_flow
from tests.support import TINY, Server, create_key, distribution

ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)]


def test_the_tinker_rest_client_drives_runs_and_checkpoints(
    tmp_path: Path, tiny_model: Path
) -> None:
    python = client_python("tinker-0.38")
    server = Server(distribution(tmp_path, tiny_model) | {"auth": {"enabled": True}}, tmp_path)
    alice, bob = create_key(server.config, "alice"), create_key(server.config, "bob")
    server.start(timeout=60)
    try:
        http = httpx.Client(base_url=server.url, headers={"X-API-Key": alice}, timeout=60)
        made = http.post(
            "/v1/datasets",
            json={
                "dataset_id": "rows",
                "purpose": "instruct",
                "source": {"type": "rows", "rows": ROWS},
            },
        )
        assert made.status_code == 200, made.text
        job = http.post(
            "/v1/post-training/supervised-fine-tune",
            json={
                "model": TINY,
                "metadata": {"team": "fish"},
                "training_config": {
                    "n_epochs": 1,
                    "max_steps_per_epoch": 2,
                    "save_every": 1,
                    "data_config": {"dataset_id": "rows", "batch_size": 2},
                    "optimizer_config": {"lr": 1e-2},
                },
                "algorithm_config": {"type": "LoRA", "rank": 2, "alpha": 4},
            },
        ).json()["job_uuid"]
        deadline = time.monotonic() + 180
        while http.get(f"/v1/post-training/jobs/{job}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        final = Path(
            http.get(f"/v1/post-training/jobs/{job}/checkpoints/step-000002").json()["path"]
        )
        on_disk = {
            p.relative_to(final).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in final.rglob("*")
            if p.is_file()
        }
        seen = json.loads(run_flow(python, "tinker_flow.py", server.url, alice, bob, job))
        http.close()
    finally:
        server.stop()
    assert seen["tinker"] == "0.38.0"
    assert seen["downloaded"] == on_disk and "adapter_model.safetensors" in on_disk


@pytest.mark.parametrize("key", ["sk-not-ours", "tml-" + "0" * 60])
def test_the_tinker_handshake_refuses_a_bad_key(tmp_path: Path, tiny_model: Path, key: str) -> None:
    server = Server(distribution(tmp_path, tiny_model) | {"auth": {"enabled": True}}, tmp_path)
    create_key(server.config, "alice")
    server.start(timeout=60)
    try:
        answer = httpx.post(
            f"{server.url}/api/v1/client/config", json={}, headers={"X-API-Key": key}
        )
    finally:
        server.stop()
    assert answer.status_code == 401 and answer.headers["x-should-retry"] == "false"
