"""The torchrun launcher: the same recipe as 2 ranks (DDP and FSDP2, gloo on CPU) reaches the
per-step losses of one process with the same global batch; a killed rank stops every rank and
the job resumes to the same losses; cancel stops every rank. One server holds a provider per
launcher (`provider_id` picks it)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TINY, Server, distribution, wait_for_job, wait_for_step

ROWS = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(16)
]
PAIRS = [
    {"prompt": f"Tell me fact {i}.", "chosen": f"Fact {i}: blorps are blue.", "rejected": "No."}
    for i in range(8)
]
TORCHRUN = {"type": "torchrun", "nproc_per_node": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("launchers")
    config = distribution(home, tiny_model)
    peft = config["providers"]["post_training"][0]
    for provider_id, launcher in (
        ("ddp", TORCHRUN),
        ("fsdp", {**TORCHRUN, "sharding": "fsdp"}),
        ("too-many", {**TORCHRUN, "nproc_per_node": (os.cpu_count() or 1) + 1}),
    ):
        extra = {**peft, "provider_id": provider_id}
        extra["config"] = {
            **peft["config"],
            "storage_dir": str(home / provider_id),
            "launcher": launcher,
            "watch_interval_seconds": 0.5,
        }
        config["providers"]["post_training"].append(extra)
    with_server = Server(config, home).start(timeout=180)
    for dataset_id, purpose, rows in (("facts", "instruct", ROWS), ("prefs", "preference", PAIRS)):
        made = httpx.post(
            f"{with_server.url}/v1/datasets",
            json={
                "dataset_id": dataset_id,
                "purpose": purpose,
                "source": {"type": "rows", "rows": rows},
            },
        )
        assert made.status_code == 200, made.text
    try:
        yield with_server
    finally:
        with_server.stop()


def _job(
    server: Server, job_uuid: str, provider_id: str, ranks: int, dpo: bool = False, **training: Any
) -> None:
    """A global batch of 4 rows a step: 2 rows x 2 micro-batches, over 1 or 2 ranks."""
    lora = {"type": "LoRA", "rank": 4, "alpha": 8, "dropout": 0.0}
    body: dict[str, Any] = {
        "job_uuid": job_uuid,
        "provider_id": provider_id,
        "training_config": {
            "n_epochs": 1 if dpo else 2,
            "save_every": 2,
            "gradient_accumulation_steps": 2 // ranks,
            "data_config": {
                "dataset_id": "prefs" if dpo else "facts",
                "batch_size": 2,
                "shuffle": True,
            },
            "optimizer_config": {"lr": 3e-3, "num_warmup_steps": 1, "lr_scheduler": "cosine"},
            "dtype": "fp32",
            **training,
        },
    }
    if dpo:
        body |= {"finetuned_model": TINY, "finetuning_config": lora}
    else:
        body |= {"model": TINY, "algorithm_config": lora}
    route = "preference-optimize" if dpo else "supervised-fine-tune"
    made = httpx.post(f"{server.url}/v1/post-training/{route}", json=body)
    assert made.status_code == 200, made.text


def _losses(server: Server, job_uuid: str) -> list[tuple[int, float]]:
    found = httpx.get(f"{server.url}/v1/post-training/jobs/{job_uuid}/metrics").json()["data"]
    return [(m["step"], m["loss"]) for m in found]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def single(server: Server) -> list[tuple[int, float]]:
    """The per-step losses of one process, 2 micro-batches of 2 rows a step."""
    _job(server, "one", "peft", ranks=1)
    assert wait_for_job(server, "one")["status"] == "completed"
    losses = _losses(server, "one")
    assert [s for s, _ in losses] == list(range(1, 9))
    return losses


def test_two_ranks_ddp_and_fsdp_reach_one_process_losses(
    server: Server, single: list[tuple[int, float]]
) -> None:
    _job(server, "ddp", "ddp", ranks=2)
    _job(server, "fsdp", "fsdp", ranks=2)
    for job in ("ddp", "fsdp"):
        done = wait_for_job(server, job)
        assert done["status"] == "completed", (job, done["error"])
        assert done["resources_allocated"]["ranks"] == 2
        ranked = _losses(server, job)
        assert [s for s, _ in ranked] == [s for s, _ in single], job
        for (step, a), (_, b) in zip(single, ranked, strict=True):
            assert abs(a - b) < 1e-4, (job, step, a, b)
        logs = httpx.get(f"{server.url}/v1/post-training/jobs/{job}/logs").json()["lines"]
        assert sum("step 8 epoch 1" in line for line in logs) == 1  # rank 0 alone logs steps
        assert any("2 rank(s), backend gloo" in line for line in logs)
        chat = {
            "model": done["fine_tuned_model"],
            "messages": [{"role": "user", "content": "Tell me fact 3."}],
            "max_tokens": 4,
        }
        served = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
        assert served.status_code == 200, served.text


def test_dpo_on_two_fsdp_ranks_reaches_one_process_losses(server: Server) -> None:
    _job(server, "one-dpo", "peft", ranks=1, dpo=True)
    _job(server, "fsdp-dpo", "fsdp", ranks=2, dpo=True)
    for job in ("one-dpo", "fsdp-dpo"):
        done = wait_for_job(server, job)
        assert done["status"] == "completed", (job, done["error"])
    one, ranked = _losses(server, "one-dpo"), _losses(server, "fsdp-dpo")
    assert [s for s, _ in one] == [s for s, _ in ranked] == [1, 2]
    for (step, a), (_, b) in zip(one, ranked, strict=True):
        assert abs(a - b) < 1e-4, (step, a, b)


def test_a_killed_rank_stops_every_rank_and_the_job_resumes_to_the_same_losses(
    server: Server, single: list[tuple[int, float]]
) -> None:
    _job(server, "killed", "ddp", ranks=2)
    status = wait_for_step(server, server.config.parent / "ddp" / "jobs", "killed", 3)
    torchrun = status["resources_allocated"]["worker_pid"]
    ranks = _children(torchrun)
    assert len(ranks) == 2, ranks
    os.kill(max(ranks), signal.SIGKILL)  # one rank, as a lost process would be
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in [torchrun, *ranks]):
        assert time.monotonic() < deadline, "a rank outlived its killed peer"
        time.sleep(0.2)
    done = wait_for_job(server, "killed")
    assert done["status"] == "completed", done["error"]
    attempts = done["attempts"]
    assert len(attempts) == 2 and "SIGKILL" in attempts[0]["ended_because"], attempts
    assert attempts[1]["resumed_from"] is not None
    resumed = _losses(server, "killed")
    assert [s for s, _ in resumed] == [s for s, _ in single]
    for (step, x), (_, y) in zip(single, resumed, strict=True):
        assert abs(x - y) < 1e-4, (step, x, y)


def test_cancel_stops_every_rank(server: Server) -> None:
    _job(server, "cancelled", "ddp", ranks=2, n_epochs=50)
    status = wait_for_job(server, "cancelled", lambda s: s["progress"]["step"] >= 1)
    torchrun = status["resources_allocated"]["worker_pid"]
    ranks = _children(torchrun)
    assert len(ranks) == 2, ranks
    answer = httpx.post(f"{server.url}/v1/post-training/jobs/cancelled/cancel", timeout=60)
    assert answer.status_code == 200, answer.text
    assert wait_for_job(server, "cancelled")["status"] == "cancelled"
    assert not any(_alive(pid) for pid in [torchrun, *ranks])


def test_more_ranks_than_cores_are_refused_at_creation(server: Server) -> None:
    body = {
        "provider_id": "too-many",
        "model": TINY,
        "training_config": {"data_config": {"dataset_id": "facts", "batch_size": 2}},
        "algorithm_config": {"type": "LoRA"},
    }
    answer = httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "launcher.nproc_per_node" and "CPU cores" in error["message"]


def test_grpo_on_torchrun_ranks_is_refused_by_name(server: Server) -> None:
    """The GRPO recipe runs as one rank: a torchrun provider refuses it at creation."""
    body = {
        "provider_id": "ddp",
        "model": TINY,
        "algorithm_config": {"group_size": 2, "max_tokens": 4},
        "grader": {
            "type": "string_check",
            "name": "same",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        },
        "finetuning_config": {"type": "LoRA", "rank": 4, "alpha": 8},
        "training_config": {"data_config": {"dataset_id": "facts", "batch_size": 2}},
    }
    answer = httpx.post(f"{server.url}/v1/post-training/reinforce", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "launcher.nproc_per_node" in error["message"] and "GRPO" in error["message"], error
