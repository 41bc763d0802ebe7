"""Experiment trackers: the server sends a job's metric lines to TensorBoard, MLflow or W&B.

Every local trainer writes `metrics.jsonl`; the server (`LocalJobs`) reads it at each watchdog
tick and forwards the new lines to the job's trackers (`logger_config.trackers`), in a thread so
the event loop never waits on a tracker. `trackers.json` in the job's folder keeps, per tracker,
where its run is (MLflow's run id, W&B's) and the last step it was sent: a restarted server or
a resumed attempt (which recomputes the steps after its checkpoint) sends only later steps and
goes on with the same MLflow run. A tracker that fails is noted in the job's log and tried again
at the next tick from its own last step; the job never fails for it. At the job's end the rest
is sent and the runs are closed with the job's status.

Each tracker's package is optional (`pip install llama-post[trackers]`); a tracker that cannot
work here (its package missing, a folder outside the provider's roots or not writable, W&B
online without a key) is refused when the job is created, naming the field.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from pydantic import TypeAdapter

from llama_post.apis.post_training import (
    JobStatus,
    LoraFinetuningConfig,
    MLflowTracker,
    StepMetrics,
    TensorBoardTracker,
    TrackerConfig,
    TrackerRun,
    TrainingRequest,
    WandbTracker,
)
from llama_post.errors import InvalidRequestError
from llama_post.storage import resolve_path
from providers.jobs.folder import JobFolder, read_jsonl, write_json_atomic
from providers.training.methods import method_of

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
NOT_SENT = {"step", "timestamp"}  # the step is each value's position; the time, its wall time
MLFLOW_STATUS = {
    JobStatus.completed: "FINISHED",
    JobStatus.failed: "FAILED",
    JobStatus.cancelled: "KILLED",
}
RUNS: TypeAdapter[list[TrackerRun]] = TypeAdapter(list[TrackerRun])


class Roots:
    """The folders a tracker may write to: the provider's storage_dir (where a relative path
    is taken from) and its checkpoint_root. Nothing a request names may lie outside them, nor
    in a folder the caller may not use (another owner's job's: `usable`, set by the stack)."""

    def __init__(self, storage_dir: Path, checkpoint_root: Path) -> None:
        self.base = storage_dir.resolve()
        self.allowed = (self.base, checkpoint_root.resolve())
        self.usable: Callable[[Path], bool] = lambda path: True

    def folder(self, given: str, field: str) -> Path:
        """`given` resolved (symlinks followed) under a root, writable; else ValueError."""
        try:
            path = resolve_path(Path(given).expanduser(), field, self.base)
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from None
        if not any(path.is_relative_to(root) and path != root for root in self.allowed):
            roots = " or ".join(str(r) for r in self.allowed)
            raise ValueError(f"{field}: {given} must be a folder under {roots}")
        if not self.usable(path):  # another owner's job's: nothing of theirs is named
            raise ValueError(f"{field}: {given} is not a folder this job may write to")
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{field}: {existing} is not a folder this server can write to")
        return path


def refusals(request: TrainingRequest, roots: Roots) -> list[tuple[str, str]]:
    """(field, why) for each tracker of the request that cannot work on this server."""
    found: list[tuple[str, str]] = []
    for i, tracker in enumerate(trackers_of(request)):
        field = f"logger_config.trackers[{i}]"
        package = PACKAGES[tracker.type]
        if importlib.util.find_spec(package) is None:
            found.append(
                (
                    f"{field}.type",
                    f"the {package} package is not installed where the server runs; install "
                    "llama-post[trackers], or leave this tracker out",
                )
            )
            continue
        try:
            _where(tracker, roots, Path(), f"{field}.")
        except ValueError as exc:
            name, _, why = str(exc).partition(": ")
            found.append((name, why))
    return found


def trackers_of(request: TrainingRequest) -> list[TrackerConfig]:
    return request.logger_config.trackers if request.logger_config else []


def _where(tracker: TrackerConfig, roots: Roots, job_dir: Path, prefix: str = "") -> TrackerRun:
    """Where a tracker's run goes, checked; a ValueError names the field ("field: why")."""
    if isinstance(tracker, TensorBoardTracker):
        log_dir = (
            roots.folder(tracker.log_dir, f"{prefix}log_dir")
            if tracker.log_dir is not None
            else JobFolder(job_dir).tensorboard
        )
        return TrackerRun(type="tensorboard", log_dir=str(log_dir))
    if isinstance(tracker, MLflowTracker):
        field = f"{prefix}tracking_uri"
        uri = urlparse(tracker.tracking_uri)
        if uri.scheme in ("http", "https") and uri.netloc:
            return TrackerRun(type="mlflow", tracking_uri=tracker.tracking_uri)
        if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
            raise ValueError(f"{field}: use an http(s):// tracking server or a file: store")
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise ValueError(
                f"{field}: MLflow 3 keeps its file store in maintenance mode and opens one only "
                "where the server's environment sets MLFLOW_ALLOW_FILE_STORE=true; set it "
                "there, or use an http(s) tracking server"
            )
        store = roots.folder(uri.path, field)
        return TrackerRun(type="mlflow", tracking_uri=store.as_uri())
    if tracker.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise ValueError(
            f"{prefix}mode: online needs WANDB_API_KEY in the server's environment, and this "
            "server has none; use offline (the run is kept in the job's folder for wandb sync)"
        )
    return TrackerRun(type="wandb")


def _placed(run: TrackerRun) -> bool:
    return run.type == "wandb" or run.log_dir is not None or run.tracking_uri is not None


class Tracker(Protocol):
    def log(self, rows: list[StepMetrics]) -> None: ...

    def held(self) -> int:
        """The last step the run already holds (0: none, or it cannot be read back)."""

    def end(self, status: JobStatus | None) -> None:
        """Close the run with the job's final status; None: the server stops, the job goes on
        at its next start."""


def _values(row: StepMetrics) -> dict[str, float]:
    values = {
        name: float(value)
        for name, value in row.model_dump(exclude_none=True).items()
        if name not in NOT_SENT and not isinstance(value, dict)
    }
    for grader, score in (row.rewards_by_grader or {}).items():  # GRPO: one series per grader
        values[f"reward/{grader}"] = score
    return values


def _params(request: TrainingRequest) -> dict[str, str]:
    """The job's settings, as a run's parameters."""
    training = request.training_config
    params = {
        "job_uuid": str(request.job_uuid),
        "model": request.model_id,
        "method": request.method,
        "algorithm": request.tuning.type,
        "dataset_id": training.data.dataset_id,
        "batch_size": str(training.data.batch_size),
        "n_epochs": str(training.n_epochs),
        "gradient_accumulation_steps": str(training.gradient_accumulation_steps),
        "optimizer": training.optimizer.optimizer_type,
        "lr": str(training.optimizer.lr),
        "lr_scheduler": training.optimizer.lr_scheduler,
        "seed": str(training.seed),
    }
    if isinstance(request.tuning, LoraFinetuningConfig):
        params |= {"lora_rank": str(request.tuning.rank), "lora_alpha": str(request.tuning.alpha)}
    params |= method_of(request).tracker_params(request)
    return params


class TensorBoard:
    def __init__(self, run: TrackerRun) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # type: ignore[import-untyped]

        assert run.log_dir is not None
        self.log_dir = Path(run.log_dir)
        self.writer = EventFileWriter(run.log_dir)  # a new events file per server run

    def held(self) -> int:
        from tensorboard.backend.event_processing.event_file_loader import (  # type: ignore[import-untyped]
            EventFileLoader,
        )

        last = 0
        for path in self.log_dir.glob("events.out.tfevents.*"):
            # a file cut short by a kill ends at its last whole event
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("summary"):
                    last = max(last, int(event.step))
        return last

    def log(self, rows: list[StepMetrics]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event  # type: ignore[import-untyped]
        from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]

        for row in rows:
            values = [Summary.Value(tag=k, simple_value=v) for k, v in _values(row).items()]
            self.writer.add_event(
                Event(wall_time=row.timestamp, step=row.step, summary=Summary(value=values))
            )
        self.writer.flush()

    def end(self, status: JobStatus | None) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, config: MLflowTracker, run: TrackerRun, request: TrainingRequest) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=run.tracking_uri)
        if run.run_id is None:  # a new run; a restarted server goes on with the one it made
            name = config.experiment_name or "llama-post"
            found = self.client.get_experiment_by_name(name)
            run.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(name)
            )
            made = self.client.create_run(
                run.experiment_id,
                run_name=config.run_name or request.job_uuid,
                tags={"llama_post.job_uuid": str(request.job_uuid)},
            )
            run.run_id = made.info.run_id
            from mlflow.entities import Param

            self.client.log_batch(
                run.run_id, params=[Param(k, v) for k, v in _params(request).items()]
            )
        self.run_id = run.run_id

    def held(self) -> int:
        keys = self.client.get_run(self.run_id).data.metrics
        if not keys:
            return 0
        key = "loss" if "loss" in keys else next(iter(keys))
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def log(self, rows: list[StepMetrics]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(key, value, int(row.timestamp * 1000), row.step)
            for row in rows
            for key, value in _values(row).items()
        ]
        for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def end(self, status: JobStatus | None) -> None:
        if status is not None:
            self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


class Wandb:
    def __init__(
        self, config: WandbTracker, run: TrackerRun, request: TrainingRequest, job_dir: Path
    ) -> None:
        import wandb

        online = config.mode == "online"
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=config.name or request.job_uuid,
            tags=config.tags,
            config=_params(request),
            dir=str(JobFolder(job_dir).wandb),
            mode=config.mode,
            id=run.run_id,
            # W&B resumes a run only online; offline, a restarted server writes a second
            # offline run of the same id, holding the steps after the first one's
            resume="allow" if online and run.run_id else None,
            reinit="create_new",  # one Run object per job; the module's global run is untouched
            settings=wandb.Settings(
                console="off", x_disable_stats=True, save_code=False, disable_git=True, silent=True
            ),
        )
        run.run_id = self.run.id
        run.run_dir = str(self.run.settings.sync_dir)
        run.url = self.run.url if online else None

    def held(self) -> int:
        # online, a resumed run drops steps before its own (W&B's rule); an offline run of
        # the same id starts empty, so what a killed server sent unrecorded is sent again
        return 0

    def log(self, rows: list[StepMetrics]) -> None:
        for row in rows:
            self.run.log(_values(row), step=row.step)

    def end(self, status: JobStatus | None) -> None:
        self.run.finish(exit_code=0 if status in (None, JobStatus.completed) else 1)


class Forwarder:
    """A job's trackers in the server: `forward` sends the metric lines each has not had yet;
    `close` sends the rest and ends the runs. Both run in a thread, one at a time."""

    def __init__(
        self,
        request: TrainingRequest,
        job_dir: Path,
        roots: Roots,
        note: Callable[[str], None],
    ) -> None:
        self.request = request
        self.configs = trackers_of(request)
        self.folder = JobFolder(job_dir)
        self.roots = roots
        self.note = note
        self.open: dict[int, Tracker] = {}
        self.lock = threading.Lock()
        saved = read_runs(job_dir)
        if len(saved) != len(self.configs):
            saved = [TrackerRun(type=c.type) for c in self.configs]
        # a run that never got a place (its tracker failed to open) is placed again when opened
        self.runs: list[TrackerRun | None] = [r if _placed(r) else None for r in saved]
        self.errors = {i: r.error for i, r in enumerate(saved) if r.error is not None}

    def forward(self) -> None:
        with self.lock:
            self._forward()

    def close(self, status: JobStatus | None) -> None:
        with self.lock:
            self._forward()
            for i, config in enumerate(self.configs):
                run = self.runs[i]
                # a job that ends in a later server than its last step (cancelled while waiting
                # for a retry) still closes its MLflow run; the others hold nothing open
                if i not in self.open and isinstance(config, MLflowTracker) and run and run.run_id:
                    self._attempt(i, lambda i=i: self._open(i))  # type: ignore[misc]
                tracker = self.open.pop(i, None)
                if tracker is not None:
                    self._attempt(i, lambda t=tracker: t.end(status))  # type: ignore[misc]
                ended = self.runs[i]
                if status is not None and ended is not None and i not in self.errors:
                    ended.ended = True
            self._save()

    def _forward(self) -> None:
        rows = [StepMetrics.model_validate(m) for m in read_jsonl(self.folder.metrics)]
        for i in range(len(self.configs)):
            run = self.runs[i]
            if not any(row.step > (run.last_step if run else 0) for row in rows):
                continue

            def send(i: int = i) -> None:
                tracker = self.open.get(i) or self._open(i)  # opening may find steps it holds
                run = self.runs[i]
                assert run is not None
                new = [row for row in rows if row.step > run.last_step]
                if new:
                    tracker.log(new)
                    run.last_step = max(row.step for row in new)

            self._attempt(i, send)
        self._save()

    def _open(self, i: int) -> Tracker:
        config = self.configs[i]
        run = self.runs[i]
        placed = run is not None
        if run is None:
            run = self.runs[i] = _where(config, self.roots, self.folder.path)
        tracker: Tracker
        if isinstance(config, TensorBoardTracker):
            tracker = TensorBoard(run)
        elif isinstance(config, MLflowTracker):
            tracker = MLflow(config, run, self.request)
        else:
            tracker = Wandb(config, run, self.request, self.folder.path)
        if placed:
            # a server killed after sending steps and before recording it: the run holds them
            run.last_step = max(run.last_step, tracker.held())
        self.open[i] = tracker
        self._save()  # the run's id, before anything is sent to it
        return tracker

    def _attempt(self, i: int, call: Callable[[], object]) -> None:
        """Run a tracker's call; a failure is the tracker's, noted once in the job's log."""
        label = f"tracker {i} ({self.configs[i].type})"
        try:
            call()
        except Exception as exc:  # a tracker's failure never reaches the job
            why = f"{type(exc).__name__}: {str(exc)[:500]}"
            if self.errors.get(i) != why:
                self.note(f"{label} failed: {why}; its steps are sent again at the next try")
            self.errors[i] = why
            return
        if self.errors.pop(i, None) is not None:
            self.note(f"{label} works again")

    def _save(self) -> None:
        runs = [
            (run or TrackerRun(type=config.type)).model_copy(update={"error": self.errors.get(i)})
            for i, (run, config) in enumerate(zip(self.runs, self.configs, strict=True))
        ]
        write_json_atomic(self.folder.trackers, RUNS.dump_python(runs, mode="json"))


def read_runs(job_dir: Path) -> list[TrackerRun]:
    """Where a job's trackers' runs are (its status's `trackers`)."""
    path = JobFolder(job_dir).trackers
    return RUNS.validate_json(path.read_text()) if path.is_file() else []
