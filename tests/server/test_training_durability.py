"""Jobs outlive the server: a SIGKILL mid-job resumes exactly; a crashing worker fails alone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from tests.support import TINY, Server, distribution, jobs_dir, wait_for_job, wait_for_step

ROWS = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(24)
]


PAIRS = [
    {"prompt": f"Tell me fact {i}.", "chosen": f"Fact {i}: blorps are blue.", "rejected": "No."}
    for i in range(24)
]


def _job(
    server: Server,
    job_uuid: str,
    dataset_id: str,
    epochs: int = 6,
    method: str = "sft",
    dtype: str = "auto",
) -> None:
    lora = {"type": "LoRA", "rank": 4, "alpha": 8, "dropout": 0.1}
    body: dict[str, Any] = {
        "job_uuid": job_uuid,
        "training_config": {
            "n_epochs": epochs,
            "gradient_accumulation_steps": 2,
            "data_config": {"dataset_id": dataset_id, "batch_size": 2, "shuffle": True},
            "optimizer_config": {"lr": 3e-3, "num_warmup_steps": 2, "lr_scheduler": "cosine"},
            "save_every": 3,
            "dtype": dtype,
        },
    }
    if method == "sft":
        body |= {"model": TINY, "algorithm_config": lora}
        route = "supervised-fine-tune"
    else:
        body |= {"finetuned_model": TINY, "finetuning_config": lora}
        route = "preference-optimize"
    made = httpx.post(f"{server.url}/v1/post-training/{route}", json=body)
    assert made.status_code == 200, made.text


def _status(server: Server, job_uuid: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{server.url}/v1/post-training/jobs/{job_uuid}").json()
    return status


def _dataset(server: Server) -> None:
    for dataset_id, purpose, rows in (("facts", "instruct", ROWS), ("prefs", "preference", PAIRS)):
        made = httpx.post(
            f"{server.url}/v1/datasets",
            json={
                "dataset_id": dataset_id,
                "purpose": purpose,
                "source": {"type": "rows", "rows": rows},
            },
        )
        assert made.status_code == 200, made.text


@pytest.mark.parametrize(("method", "dtype"), [("sft", "fp32"), ("sft", "bf16"), ("dpo", "bf16")])
def test_a_killed_server_resumes_its_job_exactly(
    tmp_path: Path, tiny_model: Path, method: str, dtype: str
) -> None:
    config = distribution(tmp_path, tiny_model)
    server = Server(config, tmp_path).start()
    _dataset(server)
    data = "facts" if method == "sft" else "prefs"
    _job(server, "straight", data, method=method, dtype=dtype)
    wait_for_job(server, "straight", lambda s: s["status"] == "completed")
    _job(server, "killed", data, method=method, dtype=dtype)
    wait_for_step(server, jobs_dir(tmp_path), "killed", 7)
    server.stop(signal.SIGKILL)

    again = Server(config, tmp_path).start()
    try:
        done = wait_for_job(again, "killed", lambda s: s["status"] in ("completed", "failed"))
        assert done["status"] == "completed", done
        logs = httpx.get(f"{again.url}/v1/post-training/jobs/killed/logs").json()["lines"]
        resumed = [
            line.split("resumed from step-")[1][:6] for line in logs if "resumed from step-" in line
        ]
        assert len(resumed) == 1 and 6 <= int(resumed[0]) < 36, "\n".join(logs[-30:])
        attempts = done["attempts"]
        assert attempts[0]["ended_because"].startswith("the server stopped under it")
        assert attempts[1]["resumed_from"] == f"step-{resumed[0]}"
        metrics = {}
        for job in ("straight", "killed"):
            found = httpx.get(f"{again.url}/v1/post-training/jobs/{job}/metrics").json()["data"]
            metrics[job] = [(m["step"], m["loss"], m["lr"]) for m in found]
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
        crashed = wait_for_job(
            with_server, "crashes", lambda s: s["status"] in ("completed", "failed")
        )
        healthy = wait_for_job(
            with_server, "healthy", lambda s: s["status"] in ("completed", "failed")
        )
        logs = httpx.get(f"{with_server.url}/v1/post-training/jobs/crashes/logs").json()["lines"]
        assert httpx.get(f"{with_server.url}/v1/health").status_code == 200
        openai_job = httpx.get(f"{with_server.url}/v1/fine_tuning/jobs/crashes").json()
        events = httpx.get(f"{with_server.url}/v1/fine_tuning/jobs/crashes/events").json()
    finally:
        with_server.stop()
    assert crashed["status"] == "failed" and "log has the traceback" in crashed["error"]
    assert openai_job["status"] == "failed" and openai_job["fine_tuned_model"] is None
    assert openai_job["error"] == {
        "code": "job_failed",
        "message": crashed["error"],
        "param": None,
    }
    assert openai_job["finished_at"] == crashed["completed_at"]
    assert (
        events["data"][0]["level"] == "error" and crashed["error"] in events["data"][0]["message"]
    )
    assert any("Traceback" in line for line in logs)
    assert healthy["status"] == "completed"


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[None]:
    """A tmpfs of `size` mounted on `folder` (root only: skipped where mounting is refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_the_job_and_keeps_the_last_checkpoint(
    tmp_path: Path, tiny_model: Path
) -> None:
    config = distribution(tmp_path, tiny_model)
    with _small_disk(tmp_path / "checkpoints", "8m"):
        server = Server(config, tmp_path).start()
        try:
            _dataset(server)
            body = {
                "job_uuid": "fills-the-disk",
                "model": TINY,
                "training_config": {
                    "n_epochs": 200,
                    "data_config": {"dataset_id": "facts", "batch_size": 1},
                    "optimizer_config": {"lr": 1e-3},
                    "save_every": 30,
                },
                "algorithm_config": {"type": "LoRA"},
            }
            made = httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)
            assert made.status_code == 200, made.text
            first = tmp_path / "checkpoints" / "fills-the-disk" / "step-000030"
            deadline = time.monotonic() + 120
            while not (first / "checkpoint.json").is_file():
                assert time.monotonic() < deadline, _status(server, "fills-the-disk")
                time.sleep(0.02)
            # the disk fills up (another tenant, say) before the next checkpoint
            ballast = tmp_path / "checkpoints" / "ballast"
            with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 65536)
            failed = wait_for_job(
                server, "fills-the-disk", lambda s: s["status"] != "in_progress", timeout=180
            )
            assert httpx.get(f"{server.url}/v1/health").status_code == 200
        finally:
            server.stop()
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith("the disk is full"), failed["error"]
        assert [c["step"] for c in failed["checkpoints"]] == [30]
        left = sorted(p.name for p in (tmp_path / "checkpoints" / "fills-the-disk").iterdir())
        assert left == ["step-000030"]  # the cut-off checkpoint was removed, the last one kept
        from peft import PeftConfig

        assert PeftConfig.from_pretrained(str(first)).r == 8
        assert load_file(str(first / "adapter_model.safetensors"))


def test_a_worker_killed_for_memory_is_retried_lighter_then_fails_with_that_reason(
    tmp_path: Path, tiny_model: Path
) -> None:
    # the kernel's out-of-memory killer ends a worker with SIGKILL; so does this test
    server = Server(distribution(tmp_path, tiny_model), tmp_path).start()
    try:
        _dataset(server)
        _job(server, "oom", "facts", epochs=200)
        running = wait_for_job(server, "oom", lambda s: len(s["checkpoints"]) >= 1)
        os.kill(running["resources_allocated"]["worker_pid"], signal.SIGKILL)
        # retried once, recomputing every layer's activations (it checkpointed every second)
        pid = running["resources_allocated"]["worker_pid"]
        retried = wait_for_job(
            server,
            "oom",
            lambda s: (
                s["status"] == "in_progress"
                and s["resources_allocated"]["worker_pid"] != pid
                and len(s["attempts"]) == 2
            ),
        )
        spec = json.loads((tmp_path / "post-training" / "jobs" / "oom" / "job.json").read_text())
        assert spec["low_memory"] is True
        os.kill(retried["resources_allocated"]["worker_pid"], signal.SIGKILL)
        failed = wait_for_job(server, "oom", lambda s: s["status"] != "in_progress")
        assert httpx.get(f"{server.url}/v1/health").status_code == 200
    finally:
        server.stop()
    assert failed["status"] == "failed", failed
    assert "out-of-memory killer" in failed["error"], failed["error"]
    first, second = failed["attempts"]
    assert "the retry recomputes activations to use less" in first["ended_because"]
    assert "out-of-memory killer" in second["ended_because"]
    assert second["resumed_from"] is not None
    kept = failed["checkpoints"][-1]
    assert f"checkpoint {Path(kept['path']).name} is intact" in failed["error"]
    assert load_file(str(Path(kept["path"]) / "adapter_model.safetensors"))
