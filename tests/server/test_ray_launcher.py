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
    """`peft` runs jobs on the head; two more providers point at no cluster, and at one whose
    interpreter does not exist (so a Ray job cannot write the shared folders)."""
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


class Running:
    """The module's server, which a test may restart."""

    def __init__(self, config: dict[str, Any], home: Path) -> None:
        self.config, self.home = config, home
        self.server = Server(config, home).start(timeout=180)

    def restart(self) -> None:
        self.server.stop(signal.SIGTERM)
        self.server = Server(self.config, self.home).start(timeout=180)


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, ray: str
) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("ray-launcher")
    started = Running(_config(home, tiny_model, ray), home)
    try:
        made = httpx.post(
            f"{started.server.url}/v1/datasets",
            json={
                "dataset_id": "facts",
                "purpose": "instruct",
                "source": {"type": "rows", "rows": ROWS},
            },
        )
        assert made.status_code == 200, made.text
        yield started
    finally:
        started.server.stop()


def test_an_unreachable_cluster_and_unwritable_folders_are_refused(running: Running) -> None:
    down = _job(running.server, "never", 1, "ray-down")
    assert down.status_code == 400, down.text
    assert down.json()["error"]["param"] == "launcher.address"
    assert "cannot be reached" in down.json()["error"]["message"]
    unwritable = _job(running.server, "never", 1, "ray-cannot-write")
    assert unwritable.status_code == 400, unwritable.text
    error = unwritable.json()["error"]
    assert error["param"] == "checkpoint_root" and "/no/such/python" in error["message"]


def test_a_job_runs_to_completion_as_a_ray_job(running: Running, ray: str) -> None:
    server = running.server
    assert _job(server, "on-ray", 1).status_code == 200
    done = wait_for_job(server, "on-ray")
    assert done["status"] == "completed", done["error"]
    attempt = done["resources_allocated"]["ray_submission_id"]
    assert attempt.startswith("on-ray-attempt-")
    ray_job = httpx.get(f"{ray}/api/jobs/{attempt}").json()
    assert ray_job["status"] == "SUCCEEDED" and ray_job["metadata"]["llama_post_job"] == "on-ray"
    metrics = httpx.get(f"{server.url}/v1/post-training/jobs/on-ray/metrics").json()["data"]
    assert [m["step"] for m in metrics] == [1, 2]
    logs = httpx.get(f"{server.url}/v1/post-training/jobs/on-ray/logs").json()["lines"]
    assert any("step 2 epoch 0" in line for line in logs), logs[-20:]
    chat = {"model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "Hi"}]}
    served = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "max_tokens": 4})
    assert served.status_code == 200, served.text


def test_a_restarted_server_reattaches_and_cancel_stops_the_ray_job(
    running: Running, ray: str
) -> None:
    assert _job(running.server, "long", 500).status_code == 200
    status = wait_for_job(running.server, "long", lambda s: s["progress"]["step"] >= 1)
    attempt = status["resources_allocated"]["ray_submission_id"]
    running.restart()
    assert httpx.get(f"{ray}/api/jobs/{attempt}").json()["status"] == "RUNNING"
    server = running.server
    step = wait_for_job(server, "long", lambda s: True)["progress"]["step"]
    wait_for_job(server, "long", lambda s: s["progress"]["step"] > step)  # still training
    cancel = httpx.post(f"{server.url}/v1/post-training/jobs/long/cancel", timeout=60)
    assert cancel.status_code == 200, cancel.text
    status = wait_for_job(server, "long")
    assert status["status"] == "cancelled"
    assert status["attempts"][-1]["ended_because"] == "cancelled"
    number = int(attempt.rsplit("-", 1)[1])
    assert len(status["attempts"]) == number  # followed, never submitted again
    assert httpx.get(f"{ray}/api/jobs/{attempt}").json()["status"] == "STOPPED"
    assert httpx.get(f"{ray}/api/jobs/long-attempt-{number + 1}").status_code == 404
