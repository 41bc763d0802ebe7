"""Experiment trackers: a real server sends a job's metrics to TensorBoard, MLflow and W&B
(offline), and each is read back with the tracker's own reader."""

from __future__ import annotations

import io
import json
import signal
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_post import LlamaPostClient
from tests.support import TINY, LibraryDriver, Server, distribution, free_port, wait_for_job

ROWS = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(24)
]
WATCHED = {"post_training": {"watch_interval_seconds": 0.5}}


def _offline(home: Path) -> dict[str, str]:
    """W&B and MLflow settings that keep everything under `home` and off the network."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(home / "wandb"),
        "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"),
        "WANDB_DATA_DIR": str(home / "wandb-data"),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # a tracking server that is down fails at once
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's MlflowClient


def _start(home: Path, tiny_model: Path, env: dict[str, str] | None = None) -> Server:
    server = Server(
        distribution(home, tiny_model, **WATCHED), home, env=_offline(home) | (env or {})
    ).start()
    made = httpx.post(
        f"{server.url}/v1/datasets",
        json={
            "dataset_id": "facts",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code in (200, 409), made.text
    return server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("trackers")
    server = _start(home, tiny_model)
    yield server
    server.stop()


def _job(job_uuid: str, trackers: list[dict[str, Any]], **training: Any) -> dict[str, Any]:
    return {
        "job_uuid": job_uuid,
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "data_config": {"dataset_id": "facts", "batch_size": 2, "shuffle": True},
            "optimizer_config": {"lr": 3e-3},
            **training,
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
        "logger_config": {"trackers": trackers},
    }


def _done(status: dict[str, Any]) -> bool:
    """The job has ended and its trackers' runs are closed."""
    ended = status["status"] in ("completed", "failed", "cancelled")
    return ended and all(t["ended"] for t in status["trackers"])


def _losses(server: Server, job_uuid: str) -> dict[int, float]:
    found = httpx.get(f"{server.url}/v1/post-training/jobs/{job_uuid}/metrics").json()["data"]
    return {m["step"]: m["loss"] for m in found}


def _tensorboard(log_dir: str, tag: str = "loss") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    events = EventAccumulator(log_dir)
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _mlflow(run: dict[str, Any]) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=run["tracking_uri"])


def _wandb_records(run_dir: str) -> list[Any]:
    """The records of an offline run's .wandb file, parsed with wandb's own protobuf types
    (the file is a LevelDB-style log: 32 KiB blocks of checksummed, typed chunks)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_history(run_dir: str) -> tuple[dict[int, dict[str, Any]], int | None]:
    """Each logged step's values, and the run's exit code (None: it never finished)."""
    history, exit_code = {}, None
    for record in _wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            values = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            history[values["_step"]] = values
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return history, exit_code


def test_a_job_sends_every_step_to_tensorboard_mlflow_and_wandb(served: Server) -> None:
    home = Path(served.config).parent
    trackers: list[dict[str, Any]] = [
        {"type": "tensorboard"},
        {
            "type": "mlflow",
            "tracking_uri": f"file:{home / 'post-training' / 'mlruns'}",
            "experiment_name": "facts",
            "run_name": "first",
        },
        {"type": "wandb", "project": "facts", "name": "first", "tags": ["tiny"]},
    ]
    made = httpx.post(
        f"{served.url}/v1/post-training/supervised-fine-tune",
        json=_job("tracked", trackers, max_steps_per_epoch=6),
    )
    assert made.status_code == 200, made.text
    status = wait_for_job(served, "tracked", _done)
    assert status["status"] == "completed", status
    losses = _losses(served, "tracked")
    assert sorted(losses) == list(range(1, 7))
    board, mlflow, wandb = status["trackers"]
    assert all(t["last_step"] == 6 and t["error"] is None for t in status["trackers"])

    assert board["log_dir"] == str(home / "post-training" / "jobs" / "tracked" / "tensorboard")
    scalars = _tensorboard(board["log_dir"])
    assert [step for step, _ in scalars] == list(range(1, 7))
    for step, value in scalars:  # TensorBoard keeps float32
        assert value == pytest.approx(losses[step], rel=1e-6)

    client = _mlflow(mlflow)
    run = client.get_run(mlflow["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert run.data.params["lr"] == "0.003" and run.data.params["lora_rank"] == "4"
    assert client.get_experiment(mlflow["experiment_id"]).name == "facts"
    history = client.get_metric_history(mlflow["run_id"], "loss")
    assert [(m.step, m.value) for m in history] == sorted(losses.items())

    assert Path(wandb["run_dir"]).is_relative_to(home / "post-training" / "jobs" / "tracked")
    steps, exit_code = _wandb_history(wandb["run_dir"])
    assert sorted(steps) == list(range(1, 7))
    assert steps[6]["loss"] == losses[6]
    assert exit_code == 0


def test_openai_integrations_are_a_wandb_tracker(served: Server) -> None:
    rows = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    upload = httpx.post(
        f"{served.url}/v1/files",
        files={"file": ("rows.jsonl", io.BytesIO(rows))},
        data={"purpose": "fine-tune"},
    )
    assert upload.status_code == 200, upload.text
    integration = {"type": "wandb", "wandb": {"project": "openai", "name": "sdk", "tags": ["a"]}}
    made = httpx.post(
        f"{served.url}/v1/fine_tuning/jobs",
        json={
            "model": TINY,
            "training_file": upload.json()["id"],
            "suffix": "tracked",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
            "integrations": [integration],
        },
    )
    assert made.status_code == 200, made.text
    job = made.json()
    assert job["integrations"] == [
        {
            "type": "wandb",
            "wandb": {"project": "openai", "name": "sdk", "entity": None, "tags": ["a"]},
        }
    ]
    status = wait_for_job(served, job["id"], _done)
    assert status["status"] == "completed", status
    (wandb,) = status["trackers"]
    steps, exit_code = _wandb_history(wandb["run_dir"])
    losses = _losses(served, job["id"])
    assert sorted(steps) == sorted(losses) and exit_code == 0
    last = max(losses)
    assert steps[last]["loss"] == losses[last]


def test_a_failing_tracker_is_noted_and_never_fails_the_job(served: Server) -> None:
    down = {"type": "mlflow", "tracking_uri": f"http://127.0.0.1:{free_port()}"}
    made = httpx.post(
        f"{served.url}/v1/post-training/supervised-fine-tune",
        json=_job("tracker-down", [down], max_steps_per_epoch=3),
    )
    assert made.status_code == 200, made.text
    status = wait_for_job(served, "tracker-down", lambda s: s["status"] in ("completed", "failed"))
    assert status["status"] == "completed", status
    (mlflow,) = status["trackers"]
    assert mlflow["error"] and mlflow["last_step"] == 0 and not mlflow["ended"]
    logs = httpx.get(f"{served.url}/v1/post-training/jobs/tracker-down/logs").json()["lines"]
    failed = [line for line in logs if "SUPERVISOR tracker 0 (mlflow) failed" in line]
    assert len(failed) == 1, "\n".join(logs[-20:])  # noted once, not at every try


def test_a_restarted_server_sends_no_step_twice(tmp_path: Path, tiny_model: Path) -> None:
    trackers = [
        {"type": "tensorboard", "log_dir": "boards/restarted"},
        {"type": "mlflow", "tracking_uri": (tmp_path / "checkpoints" / "mlruns").as_uri()},
    ]
    # the first server's worker wedges at step 20 (its last checkpoint: step 18), so the kill
    # lands mid-job however fast the steps go
    server = _start(tmp_path, tiny_model, {"LLAMA_POST_TEST_FAULT": "stall@20"})
    made = httpx.post(
        f"{server.url}/v1/post-training/supervised-fine-tune",
        json=_job("restarted", trackers, n_epochs=3, save_every=3)
        | {"supervision": {"stall_seconds": 600}},
    )
    assert made.status_code == 200, made.text
    first = wait_for_job(
        server,
        "restarted",
        lambda s: min(t["last_step"] for t in s["trackers"] or [{"last_step": 0}]) >= 19,
    )
    server.stop(signal.SIGKILL)
    # killed after sending steps 14-19 and before recording it: the runs hold them already
    runs = tmp_path / "post-training" / "jobs" / "restarted" / "trackers.json"
    saved = json.loads(runs.read_text())
    assert [run["last_step"] for run in saved] == [19, 19]
    runs.write_text(json.dumps([run | {"last_step": 13} for run in saved]))

    again = _start(tmp_path, tiny_model)
    try:
        status = wait_for_job(again, "restarted", _done)
        assert status["status"] == "completed", status
        losses = _losses(again, "restarted")
        logs = httpx.get(f"{again.url}/v1/post-training/jobs/restarted/logs").json()["lines"]
    finally:
        again.stop()
    assert any("resumed from step-" in line for line in logs), "\n".join(logs[-20:])
    assert sorted(losses) == list(range(1, 37))
    board, mlflow = status["trackers"]
    assert board["log_dir"] == str(tmp_path / "post-training" / "boards" / "restarted")
    assert [step for step, _ in _tensorboard(board["log_dir"])] == list(range(1, 37))
    assert mlflow["run_id"] == first["trackers"][1]["run_id"]
    client = _mlflow(mlflow)
    history = client.get_metric_history(mlflow["run_id"], "loss")
    assert [m.step for m in history] == list(range(1, 37))
    assert client.get_run(mlflow["run_id"]).info.status == "FINISHED"


# -- refusals, at creation, naming the field -----------------------------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LibraryDriver]:
    home = tmp_path_factory.mktemp("trackers-library")
    with LlamaPostClient(distribution(home, tiny_model)) as client:
        yield LibraryDriver(client)


def _refused(library: LibraryDriver, tracker: dict[str, Any]) -> tuple[int, str]:
    body = _job("refused", [{"type": "tensorboard"}, tracker])
    result = library.call("post_training", "supervised_fine_tune", body=body)
    return result.status, result.error["param"]


def test_an_unknown_tracker_is_a_schema_error_naming_its_type(library: LibraryDriver) -> None:
    assert _refused(library, {"type": "comet"}) == (422, "logger_config.trackers[1].type")
    result = library.call(
        "post_training",
        "create_fine_tuning_job",
        body={"model": TINY, "training_file": "file-x", "integrations": [{"type": "comet"}]},
    )
    assert (result.status, result.error["param"]) == (422, "integrations[0].type")


@pytest.mark.parametrize("package", ["tensorboard", "mlflow", "wandb"])
def test_a_tracker_whose_package_is_missing_is_refused(
    library: LibraryDriver, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what `import` finds where it is missing
    tracker = {
        "tensorboard": {"type": "tensorboard"},
        "mlflow": {"type": "mlflow", "tracking_uri": "http://127.0.0.1:5000"},
        "wandb": {"type": "wandb", "project": "p"},
    }[package]
    index = 0 if package == "tensorboard" else 1
    assert _refused(library, tracker) == (400, f"logger_config.trackers[{index}].type")


@pytest.mark.parametrize(
    ("tracker", "field"),
    [
        ({"type": "tensorboard", "log_dir": "/etc/boards"}, "log_dir"),
        ({"type": "tensorboard", "log_dir": "../../escaped"}, "log_dir"),
        ({"type": "tensorboard", "log_dir": "jobs.db/boards"}, "log_dir"),  # under a file
        ({"type": "mlflow", "tracking_uri": "file:///etc/mlruns"}, "tracking_uri"),
        ({"type": "mlflow", "tracking_uri": "ftp://example.com/runs"}, "tracking_uri"),
        ({"type": "wandb", "project": "p", "mode": "online"}, "mode"),
    ],
)
def test_a_tracker_that_cannot_work_here_is_refused(
    library: LibraryDriver, tracker: dict[str, Any], field: str
) -> None:
    assert _refused(library, tracker) == (400, f"logger_config.trackers[1].{field}")


def test_a_file_store_needs_mlflows_own_opt_in(
    library: LibraryDriver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    status, param = _refused(library, {"type": "mlflow", "tracking_uri": "file:mlruns"})
    assert (status, param) == (400, "logger_config.trackers[1].tracking_uri")
