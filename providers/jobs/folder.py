"""A job's folder: what the server hands a worker and what the worker leaves there. `JobFolder`
is the one place these names are spelled; every trainer's worker reads and writes through it.

job.json           the request, with the model folder and the data snapshot resolved
train.jsonl        the training rows, snapshotted when the job was created
validation.jsonl   the validation rows (a dataset, or a held-out split)
train.log          the worker's output, tracebacks included
metrics.jsonl      one StepMetrics line per logged step
progress.json      step, total_steps, epoch (replaced atomically each step)
heartbeat.json     the worker's own time, pid, attempt, phase, step, micro-batch and slowest step
                   (rank 0's)
trackers.json      the server's: where each experiment tracker's run is, and the last step sent
tensorboard/       the server's: TensorBoard event files (a tracker's default folder)
wandb/             the server's: W&B's offline runs
<checkpoint_dir>/step-000010/   checkpoint.json, the PEFT adapter (or full model), state.pt
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from llama_post.apis.post_training import PreflightResponse, TrainingRequest

CHECKPOINT_PREFIX = "step-"
EXIT_CANCELLED = 3  # worker exit codes
EXIT_OUT_OF_MEMORY = 4
EXIT_NONFINITE = 5  # a non-finite loss or gradient: the job's fault, never retried
EXIT_LOST = 6  # what a launcher answers for a worker it lost (a Ray job's node): retried
ATTEMPT_ENV = "LLAMA_POST_ATTEMPT"  # the attempt a worker runs for, so its heartbeat is known
# where a worker calls this server's inference, and the key its attempt may (a score_model grader)
INFERENCE_URL_ENV, INFERENCE_KEY_ENV = "LLAMA_POST_INFERENCE_URL", "LLAMA_POST_INFERENCE_KEY"


class JobSpec(BaseModel):
    job_uuid: str
    request: TrainingRequest
    base_folder: str
    adapter_folder: str | None = None
    checkpoint_dir: str
    device: str = "cpu"
    dtype: Literal["fp32", "bf16"] = "fp32"
    dtype_reason: str = ""
    torch_threads: int | None = None
    low_memory: bool = False  # a retry after running out of memory: recompute every layer
    ranks: int = 1  # the recipe's ranks in all (torchrun: nproc_per_node x nnodes)
    sharding: Literal["none", "fsdp"] = "none"
    # GRPO: what the distribution allows graders (`GraderSettings`: the python grader's switch
    # and limits), for the worker's own runner
    grader_settings: dict[str, float | bool] = {}


@dataclass
class Prepared:
    """A job checked and ready to queue: its spec, its data snapshot, the pre-flight report,
    the training rows as rendered (per row, one example or a preference pair), and any files of
    the trainer's own to write into the job's folder (name -> text)."""

    spec: JobSpec
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    report: PreflightResponse
    examples: list[Any] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


class JobFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec = path / "job.json"
        self.train = path / "train.jsonl"
        self.validation = path / "validation.jsonl"
        self.log = path / "train.log"
        self.metrics = path / "metrics.jsonl"
        self.progress = path / "progress.json"
        self.heartbeat = path / "heartbeat.json"
        self.trackers = path / "trackers.json"
        self.tensorboard = path / "tensorboard"
        self.wandb = path  # wandb.init(dir=...) writes its own `wandb/` folder in it

    def read_spec(self) -> JobSpec:
        return JobSpec.model_validate_json(self.spec.read_text())

    def write(self, prepared: Prepared) -> None:
        """Write the job's files into a staging folder, then move it into place whole."""
        staging = JobFolder(self.path.with_name(self.path.name + ".partial"))
        shutil.rmtree(staging.path, ignore_errors=True)
        staging.path.mkdir(parents=True)
        staging.spec.write_text(prepared.spec.model_dump_json(indent=2))
        for path, rows in (
            (staging.train, prepared.train),
            (staging.validation, prepared.validation),
        ):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name, text in prepared.files.items():
            (staging.path / name).write_text(text)
        shutil.rmtree(self.path, ignore_errors=True)
        staging.path.replace(self.path)


def write_json_atomic(path: Path, data: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


class Heartbeat:
    """A worker's evidence of progress: its own clock, its pid, what it is doing, and the
    longest training step it has completed (`slowest_step`, which sets the watchdog's window in
    training). Written at most every `every` seconds within a step of a phase (at once when
    either changes), so a loop of fast micro-batches costs nothing; the server's watchdog reads
    it (`read_heartbeat`)."""

    def __init__(self, path: Path, every: float = 1.0, clock: Any = time.time) -> None:
        self.path = path
        self.every = every
        self.clock = clock
        self.pid = os.getpid()
        self.attempt = os.environ.get(ATTEMPT_ENV)  # the server's name for this attempt
        self.slowest: float | None = None
        self._current: tuple[str, int | None] = ("", None)
        self._began = 0.0  # when the current phase and step began
        self._written = 0.0

    def __call__(self, phase: str, step: int | None = None, micro: int | None = None) -> None:
        now = self.clock()
        if (phase, step) != self._current:
            if self._current[0] == "training" and self._current[1] is not None:
                self.slowest = max(self.slowest or 0.0, now - self._began)
            self._current, self._began = (phase, step), now
        elif now - self._written < self.every:
            return
        self._written = now
        beat = {
            "time": now,
            "pid": self.pid,
            "attempt": self.attempt,
            "phase": phase,
            "step": step,
            "micro": micro,
            "slowest_step": self.slowest,
        }
        partial = self.path.with_name(f"{self.path.name}.partial")
        partial.write_text(json.dumps(beat))
        partial.replace(self.path)


def read_heartbeat(path: Path) -> dict[str, Any] | None:
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return beat if isinstance(beat, dict) and isinstance(beat.get("time"), float) else None


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. One cut off mid-write has no checkpoint.json."""
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(CHECKPOINT_PREFIX) and (child / "checkpoint.json").is_file():
                found.append((int(child.name[len(CHECKPOINT_PREFIX) :]), child))
    return sorted(found)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut off by a kill
    return rows
