"""Run supervision: the stall watchdog, bounded retries from the last checkpoint, and the
non-finite guard, on real workers of a real server."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.jobs.folder import Heartbeat, read_heartbeat
from providers.jobs.supervision import paced_window
from tests.support import (
    TINY,
    Server,
    distribution,
    ended,
    jobs_dir,
    wait_for_job,
    wait_for_step,
)

ROWS = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(24)
]
WATCHED = {"post_training": {"watch_interval_seconds": 0.5}}


def _server(home: Path, tiny_model: Path, fault: str | None = None, **config: Any) -> Server:
    env = {"LLAMA_POST_TEST_FAULT": fault} if fault else None
    training = {"post_training": {**WATCHED["post_training"], **config}}
    server = Server(distribution(home, tiny_model, **training), home, env=env).start()
    made = httpx.post(
        f"{server.url}/v1/datasets",
        json={
            "dataset_id": "facts",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    return server


def _job(server: Server, job_uuid: str, **supervision: Any) -> httpx.Response:
    body = {
        "job_uuid": job_uuid,
        "model": TINY,
        "training_config": {
            "n_epochs": 3,  # 6 steps an epoch: 18 steps
            "gradient_accumulation_steps": 2,
            "data_config": {"dataset_id": "facts", "batch_size": 2, "shuffle": True},
            "optimizer_config": {"lr": 3e-3, "num_warmup_steps": 2, "lr_scheduler": "cosine"},
            "save_every": 3,
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8, "dropout": 0.1},
        "supervision": supervision,
    }
    return httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)


def _status(server: Server, job_uuid: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{server.url}/v1/post-training/jobs/{job_uuid}").json()
    return status


def _losses(server: Server, job_uuid: str) -> list[tuple[int, float]]:
    found = httpx.get(f"{server.url}/v1/post-training/jobs/{job_uuid}/metrics").json()["data"]
    return [(m["step"], m["loss"]) for m in found]


def test_a_frozen_worker_is_retried_and_ends_as_if_nothing_happened(
    tmp_path: Path, tiny_model: Path
) -> None:
    server = _server(tmp_path, tiny_model)
    try:
        assert _job(server, "straight").status_code == 200
        assert wait_for_job(server, "straight", ended)["status"] == "completed"
        # the freeze may land while a checkpoint is saved (every 3 steps), whose own default
        # window is 900 s: both phases get 5 s
        stall = {"training": 5, "saving": 5}
        assert _job(server, "frozen", stall_seconds=stall).status_code == 200
        running = wait_for_step(server, jobs_dir(tmp_path), "frozen", 7)
        os.kill(running["resources_allocated"]["worker_pid"], signal.SIGSTOP)  # wedged
        done = wait_for_job(server, "frozen", ended)
        losses = {job: _losses(server, job) for job in ("straight", "frozen")}
        openai_job = httpx.get(f"{server.url}/v1/fine_tuning/jobs/frozen").json()
        events = httpx.get(f"{server.url}/v1/fine_tuning/jobs/frozen/events").json()["data"]
        logs = httpx.get(f"{server.url}/v1/post-training/jobs/frozen/logs").json()["lines"]
    finally:
        server.stop()
    assert done["status"] == "completed", done
    first, second = done["attempts"]
    assert first["attempt"] == 1 and first["resumed_from"] is None
    assert first["ended_because"].startswith(
        ("the worker stalled in its training phase at step", "the worker stalled in its saving")
    ), first
    assert "(the limit is 5 s)" in first["ended_because"]
    assert second["attempt"] == 2 and second["ended_because"] is None
    # from a checkpoint taken before the freeze (every 3 steps; the freeze lands at step 7 or,
    # as fast as the tiny model trains, a few steps later)
    assert second["resumed_from"] in [f"step-{n:06d}" for n in (6, 9, 12, 15)], second
    assert any("SUPERVISOR attempt 1 ended: the worker stalled" in line for line in logs)
    assert any(
        f"SUPERVISOR attempt 2 starts, resuming from {second['resumed_from']}" in line
        for line in logs
    )
    # exact resume: the same per-step losses as the run nobody touched
    assert [s for s, _ in losses["frozen"]] == list(range(1, 19))
    for (step, ours), (_, theirs) in zip(losses["straight"], losses["frozen"], strict=True):
        assert abs(ours - theirs) < 1e-5, step
    assert openai_job["status"] == "succeeded"
    retried = [e for e in events if e["message"].startswith("Attempt 2 started")]
    assert len(retried) == 1 and retried[0]["level"] == "warn"
    assert "attempt 1 ended: the worker stalled" in retried[0]["message"]


def test_a_job_that_stalls_every_time_fails_after_its_retries(
    tmp_path: Path, tiny_model: Path
) -> None:
    # no window set: once a step has completed, ten times the slowest step (a fraction of a
    # second for the tiny model) with the provider's floor, not the 600 s training default
    server = _server(tmp_path, tiny_model, fault="stall@5", stall_floor_seconds=5)
    try:
        made = _job(server, "wedges", max_retries=2)
        assert made.status_code == 200, made.text
        failed = wait_for_job(server, "wedges", ended)
    finally:
        server.stop()
    assert failed["status"] == "failed", failed
    assert failed["error"].startswith("the worker stalled in its training phase at step 5")
    assert "(the limit is 5 s: 10 times its slowest step" in failed["error"], failed["error"]
    assert failed["error"].endswith("(attempt 3; giving up after 2 retries)")
    attempts = failed["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["resumed_from"] for a in attempts] == [None, "step-000003", "step-000003"]
    assert all("stalled in its training phase at step 5" in a["ended_because"] for a in attempts)
    assert all(a["ended_at"] >= a["started_at"] for a in attempts)


def test_the_training_window_follows_the_slowest_step(tmp_path: Path) -> None:
    clock = [1000.0]
    beat = Heartbeat(tmp_path / "heartbeat.json", clock=lambda: clock[0])
    beat("loading")
    clock[0] += 300  # loading is no step
    beat("training", 1, 0)
    assert read_heartbeat(beat.path)["slowest_step"] is None  # type: ignore[index]
    clock[0] += 400  # a slow first step (a compile, a cold cache)
    beat("training", 2, 0)
    assert read_heartbeat(beat.path)["slowest_step"] == 400  # type: ignore[index]
    clock[0] += 2
    beat("saving", 2)
    clock[0] += 50  # saving is no step either
    beat("training", 3, 0)
    assert read_heartbeat(beat.path)["slowest_step"] == 400  # type: ignore[index]
    # before a step has completed the set window holds, so a slow first step is no stall;
    # a 2-second step's stall is caught in a minute; a slow one's window stays the set one
    assert paced_window(600, 2.0, 10, 60) == (
        60,
        ": 10 times its slowest step, 2 s, at least 60 s",
    )
    assert paced_window(600, 12.5, 10, 60)[0] == 125
    assert paced_window(600, 400.0, 10, 60) == (600, "")
    assert paced_window(600, 2.0, None, 60) == (600, "")


def test_a_non_finite_loss_stops_the_job_naming_the_step_or_is_skipped(
    tmp_path: Path, tiny_model: Path
) -> None:
    server = _server(tmp_path, tiny_model, fault="nan@4")
    try:
        assert _job(server, "diverges").status_code == 200
        assert _job(server, "skips", on_nonfinite="skip", max_skipped_steps=1).status_code == 200
        stopped = wait_for_job(server, "diverges", ended)
        skipped = wait_for_job(server, "skips", ended)
        logs = httpx.get(f"{server.url}/v1/post-training/jobs/skips/logs").json()["lines"]
        losses = _losses(server, "skips")
    finally:
        server.stop()
    assert stopped["status"] == "failed", stopped
    assert stopped["error"].startswith("non-finite loss (nan) at step 4: the job stopped")
    assert len(stopped["attempts"]) == 1  # the job's own fault: not retried
    assert "checkpoint step-000003 is intact" in stopped["error"]

    assert skipped["status"] == "completed", skipped
    assert any("non-finite loss (nan) at step 4: step skipped (1 of 1)" in line for line in logs)
    assert [s for s, _ in losses] == list(range(1, 19))
    assert all(loss == loss for step, loss in losses if step != 4)  # finite after the skip


def test_out_of_range_supervision_is_refused_naming_the_field(server: Server) -> None:
    for supervision, field in (
        ({"max_retries": 11}, "supervision.max_retries"),
        ({"max_retries": -1}, "supervision.max_retries"),
        ({"stall_seconds": 1}, "supervision.stall_seconds"),
        ({"stall_seconds": {"training": 100000}}, "supervision.stall_seconds"),
        ({"stall_seconds": {"sleeping": 60}}, "supervision.stall_seconds"),
        ({"on_nonfinite": "ignore"}, "supervision.on_nonfinite"),
    ):
        made = _job(server, "never-runs", **supervision)
        assert made.status_code == 422, (supervision, made.text)  # the server's schema errors
        details = made.json()["error"]["details"]
        assert any(d["field"].startswith(field) for d in details), (supervision, made.text)
    assert httpx.get(f"{server.url}/v1/post-training/jobs/never-runs").status_code == 404


@pytest.fixture
def server(tmp_path: Path, tiny_model: Path) -> Any:
    srv = _server(tmp_path, tiny_model)
    yield srv
    srv.stop()
