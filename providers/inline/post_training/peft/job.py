"""What the server hands a worker (`job.json`) and the files a worker leaves in its job folder.

job.json           the request, with the model folder and the data snapshot resolved
train.jsonl        the training rows, snapshotted when the job was created
validation.jsonl   the validation rows (a dataset, or a held-out split)
train.log          the worker's output, tracebacks included
metrics.jsonl      one StepMetrics line per logged step
progress.json      step, total_steps, epoch (replaced atomically each step)
<checkpoint_dir>/step-000010/   checkpoint.json, the PEFT adapter (or full model), state.pt
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llama_post.apis.post_training import TrainingRequest

CHECKPOINT_PREFIX = "step-"
EXIT_CANCELLED = 3  # worker exit codes
EXIT_OUT_OF_MEMORY = 4


class JobSpec(BaseModel):
    job_uuid: str
    request: TrainingRequest
    base_folder: str
    adapter_folder: str | None = None
    checkpoint_dir: str
    device: str = "cpu"
    torch_threads: int | None = None


def write_json_atomic(path: Path, data: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


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
