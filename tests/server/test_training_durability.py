"""Jobs outlive the server: a SIGKILL mid-job resumes exactly; a crashing worker fails alone."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load_file

from tests.support import TINY, Server, distribution

ROWS = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(24)
]


def _job(server: Server, job_uuid: str, dataset_id: str, epochs: int = 6) -> None:
    body = {
        "job_uuid": job_uuid,
        "model": TINY,
        "training_config": {
            "n_epochs": epochs,
            "gradient_accumulation_steps": 2,
            "data_config": {"dataset_id": dataset_id, "batch_size": 2, "shuffle": True},
            "optimizer_config": {"lr": 3e-3, "num_warmup_steps": 2, "lr_scheduler": "cosine"},
            "save_every": 3,
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8, "dropout": 0.1},
    }
    made = httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)
    assert made.status_code == 200, made.text


def _status(server: Server, job_uuid: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{server.url}/v1/post-training/jobs/{job_uuid}").json()
    return status


def _wait(server: Server, job_uuid: str, until: Any, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(server, job_uuid)
        if until(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"{job_uuid}: {_status(server, job_uuid)}")


def _dataset(server: Server) -> None:
    made = httpx.post(
        f"{server.url}/v1/datasets",
        json={
            "dataset_id": "facts",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text


def test_a_killed_server_resumes_its_job_exactly(tmp_path: Path, tiny_model: Path) -> None:
    config = distribution(tmp_path, tiny_model)
    server = Server(config, tmp_path).start()
    _dataset(server)
    _job(server, "straight", "facts")
    _wait(server, "straight", lambda s: s["status"] == "completed")
    _job(server, "killed", "facts")
    _wait(server, "killed", lambda s: s["progress"]["step"] >= 7)
    server.stop(signal.SIGKILL)

    again = Server(config, tmp_path).start()
    try:
        done = _wait(again, "killed", lambda s: s["status"] in ("completed", "failed"))
        assert done["status"] == "completed", done
        logs = httpx.get(f"{again.url}/v1/post-training/jobs/killed/logs").json()["lines"]
        resumed = [
            line.split("resumed from step-")[1][:6] for line in logs if "resumed from step-" in line
        ]
        assert len(resumed) == 1 and 6 <= int(resumed[0]) < 36, "\n".join(logs[-30:])
        metrics = {}
        for job in ("straight", "killed"):
            data = httpx.get(f"{again.url}/v1/post-training/jobs/{job}/metrics").json()["data"]
            metrics[job] = [(m["step"], m["loss"], m["lr"]) for m in data]
    finally:
        again.stop()
    assert [m[0] for m in metrics["killed"]] == list(range(1, 37))
    for (step, loss, lr), (_, loss2, lr2) in zip(
        metrics["straight"], metrics["killed"], strict=True
    ):
        assert abs(loss - loss2) < 1e-5 and abs(lr - lr2) < 1e-12, step
    final = {
        job: load_file(
            str(tmp_path / "checkpoints" / job / "step-000036" / "adapter_model.safetensors")
        )
        for job in ("straight", "killed")
    }
    for name, tensor in final["straight"].items():
        torch.testing.assert_close(tensor, final["killed"][name], rtol=1e-5, atol=1e-6)


def test_a_crashing_worker_fails_only_its_own_job(tmp_path: Path, tiny_model: Path) -> None:
    doomed = tmp_path / "models" / "doomed"
    shutil.copytree(tiny_model, doomed)
    config = distribution(tmp_path, tiny_model)
    config["providers"]["inference"][0]["config"]["model_dirs"].append(str(doomed.parent))
    config["models"].append(
        {"model_id": "tiny/doomed", "source": {"type": "huggingface", "path": str(doomed)}}
    )
    with_server = Server(config, tmp_path).start()
    try:
        _dataset(with_server)
        _job(with_server, "healthy", "facts", epochs=2)
        body = {
            "job_uuid": "crashes",
            "model": "tiny/doomed",
            "training_config": {
                "data_config": {"dataset_id": "facts", "batch_size": 4},
                "optimizer_config": {"lr": 1e-3},
            },
            "algorithm_config": {"type": "LoRA"},
        }
        assert (
            httpx.post(
                f"{with_server.url}/v1/post-training/supervised-fine-tune", json=body
            ).status_code
            == 200
        )
        (doomed / "model.safetensors").unlink()  # the worker cannot load its weights
        crashed = _wait(with_server, "crashes", lambda s: s["status"] in ("completed", "failed"))
        healthy = _wait(with_server, "healthy", lambda s: s["status"] in ("completed", "failed"))
        logs = httpx.get(f"{with_server.url}/v1/post-training/jobs/crashes/logs").json()["lines"]
        assert httpx.get(f"{with_server.url}/v1/health").status_code == 200
    finally:
        with_server.stop()
    assert crashed["status"] == "failed" and "log has the traceback" in crashed["error"]
    assert any("Traceback" in line for line in logs)
    assert healthy["status"] == "completed"
