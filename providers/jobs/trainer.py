"""What a trainer hands the shared job machinery (`LocalJobs`): a small Protocol of hooks.

`LocalJobs` does everything every local trainer needs (the store, the creation checks, the
estimates, the launch, the supervision, the trackers and checkpoints); a trainer implements
`Trainer` for what is its own: the methods it runs, its refusals, how it prepares a job's
folder, the worker command, and (optionally) a calibration and a lighter retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llama_post.apis.models import Model
from llama_post.apis.post_training import TrainingRequest
from providers.jobs.folder import JobSpec, Prepared
from providers.training.methods import TrainingMethod


@dataclass
class Gathered:
    """A request's model and rows, found and checked; its spec, for the trainer to finish."""

    model: Model
    spec: JobSpec
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]] | None


class Trainer(Protocol):
    # the methods (`request.method`) it runs; for any other, its `refusals` alone say why
    methods: frozenset[str]

    def refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        """(field, why) for each field it cannot honour, beyond what no local trainer does."""
        ...

    async def prepare(self, got: Gathered, job_dir: Path) -> Prepared:
        """Finish a checked request into what its worker reads: the rows rendered, the report
        and the trainer's own files (`job_dir` is where the job's folder will be)."""
        ...

    def worker(self, request: TrainingRequest, job_dir: Path) -> list[str]:
        """The command that runs the job in `job_dir`."""
        ...

    def multi_rank(self, method: TrainingMethod[Any]) -> bool:
        """Whether its worker for `method` runs as torchrun's ranks."""
        ...

    def calibrator(self, folder: Path) -> list[str] | None:
        """The command that calibrates a job's largest micro-batch in `folder` (see
        `providers/training/estimate.py`); None where it has none (no time or cost limits)."""
        ...

    def lighter(self, spec: JobSpec) -> JobSpec | None:
        """The job's spec changed to use less memory, for a retry after it ran out; None where
        it has no lighter way to run it."""
        ...
