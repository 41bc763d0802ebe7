from typing import Literal

from pydantic import Field

from llama_post.schema import StrictModel, UserPath


class LocalJobsConfig(StrictModel):
    """What every local trainer's jobs are configured with."""

    storage_dir: UserPath = Field(description="Job records, data snapshots, logs and metrics.")
    checkpoint_root: UserPath = Field(
        description="Checkpoints go here; list it in the inference provider's model_dirs."
    )
    max_concurrent_jobs: int = Field(1, ge=1, le=64, description="More wait in the queue.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="Per worker; torch's default.")
    cancel_grace_seconds: float = Field(8.0, gt=0, le=60, description="Then the worker is killed.")
