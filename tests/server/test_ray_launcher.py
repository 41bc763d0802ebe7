"""The Ray launcher against a real Ray head (its own environment, `make engine-ray`), started
by a fixture on loopback: a job runs to completion as a Ray job, its logs and metrics read
back; a server restart re-attaches to a Ray job still running instead of submitting it again;
cancel stops the Ray job; an unreachable cluster and a worker that cannot write the shared
folders are refused at creation."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TINY, Server, distribution, free_port, ray_head, wait_for_job

pytestmark = pytest.mark.slow  # a Ray head takes ~10 s to start and 1.6 GiB

ROWS = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(8)
]


@pytest.fixture(scope="module")
def ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ray_head() as url:
        yield url


def _config(home: Path, model: Path, ray: str) -> dict[str, Any]:
    config = distribution(home, model)
    peft = config["providers"]["post_training"][0]
    peft["config"]["launcher"] = {"type": "ray", "address": ray, "poll_seconds": 0.5}
    for provider_id, launcher in (
        ("ray-down", {"type": "ray", "address": f"http://127.0.0.1:{free_port()}"}),
        ("ray-cannot-write", {"type": "ray", "address": ray, "python": "/no/such/python"}),
    ):
        config["providers"]["post_training"].append(
            {
                **peft,
                "provider_id": provider_id,
                "config": {
                    **peft["config"],
                    "storage_dir": str(home / provider_id),
                    "launcher": launcher,
                },
            }
        )
    return config


def _job(server: Server, job_uuid: str, epochs: int, provider_id: str = "peft") -> httpx.Response:
    body = {
        "job_uuid": job_uuid,
        "provider_id": provider_id,
        "model": TINY,
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
        "training_config": {
            "n_epochs": epochs,
            "data_config": {"dataset_id": "facts", "batch_size": 4},
            "optimizer_config": {"lr": 1e-3},
            "dtype": "fp32",
        },
    }
    return httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body, timeout=180)


def test_jobs_run_restart_and_cancel_through_a_real_ray_head(
    tmp_path: Path, tiny_model: Path, ray: str
) -> None:
    config = _config(tmp_path, tiny_model, ray)
    server = Server(config, tmp_path).start(timeout=180)
    try:
        made = httpx.post(
            f"{server.url}/v1/datasets",
            json={
                "dataset_id": "facts",
                "purpose": "instruct",
                "source": {"type": "rows", "rows": ROWS},
            },
        )
        assert made.status_code == 200, made.text

        down = _job(server, "never", 1, "ray-down")
        assert down.status_code == 400 and down.json()["error"]["param"] == "launcher.address"
        unwritable = _job(server, "never", 1, "ray-cannot-write")
        assert unwritable.status_code == 400, unwritable.text
        assert unwritable.json()["error"]["param"] == "checkpoint_root"

        assert _job(server, "on-ray", 1).status_code == 200
        done = wait_for_job(server, "on-ray")
        assert done["status"] == "completed", done["error"]
        assert done["resources_allocated"]["ray_submission_id"] == "on-ray-attempt-1"
        ray_job = httpx.get(f"{ray}/api/jobs/on-ray-attempt-1").json()
        assert (
            ray_job["status"] == "SUCCEEDED" and ray_job["metadata"]["llama_post_job"] == "on-ray"
        )
        metrics = httpx.get(f"{server.url}/v1/post-training/jobs/on-ray/metrics").json()["data"]
        assert [m["step"] for m in metrics] == [1, 2]
        logs = httpx.get(f"{server.url}/v1/post-training/jobs/on-ray/logs").json()["lines"]
        assert any("step 2 epoch 0" in line for line in logs), logs[-20:]

        assert _job(server, "long", 500).status_code == 200
        wait_for_job(server, "long", lambda s: s["progress"]["step"] >= 1)
        server.stop(signal.SIGTERM)
        assert httpx.get(f"{ray}/api/jobs/long-attempt-1").json()["status"] == "RUNNING"
        server = Server(config, tmp_path).start(timeout=180)
        step = wait_for_job(server, "long", lambda s: True)["progress"]["step"]
        wait_for_job(server, "long", lambda s: s["progress"]["step"] > step)  # still training
        cancel = httpx.post(f"{server.url}/v1/post-training/jobs/long/cancel", timeout=60)
        assert cancel.status_code == 200, cancel.text
        status = wait_for_job(server, "long")
        assert status["status"] == "cancelled"
        assert len(status["attempts"]) == 1  # followed, never submitted again
        ray_status = httpx.get(f"{ray}/api/jobs/long-attempt-1").json()["status"]
        assert ray_status == "STOPPED"
        assert httpx.get(f"{ray}/api/jobs/long-attempt-2").status_code == 404
    finally:
        server.stop()
