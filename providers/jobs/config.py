from typing import Literal

from pydantic import Field, field_validator

from llama_post.apis.post_training.models import Phase, StallSeconds
from llama_post.schema import StrictModel, UserPath
from providers.jobs.launchers import Launcher, LocalLauncher

# a big model loads (and its reference pass runs) for a long time before its first step; in
# training these windows hold until a step has completed, then the job's own pace sets a shorter
# one (`stall_step_factor`)
STALL_DEFAULTS: dict[Phase, float] = {
    "loading": 1800.0,
    "reference": 1800.0,
    "training": 600.0,
    "validating": 1800.0,
    "saving": 900.0,
}


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
    stall_seconds: dict[Phase, StallSeconds] = Field(
        default_factory=lambda: dict(STALL_DEFAULTS),
        description="How long a worker may show no progress in each phase before it is "
        "killed and retried; a job's supervision.stall_seconds overrides them.",
    )
    stall_step_factor: float | None = Field(
        10.0,
        ge=2,
        le=1000,
        description="In training, once the worker has completed a step, the window is this "
        "many times its slowest step so far (at least stall_floor_seconds, at most "
        "stall_seconds.training), unless the job sets its own; null: stall_seconds alone.",
    )
    stall_floor_seconds: StallSeconds = Field(
        60.0, description="The shortest window stall_step_factor gives."
    )
    price_per_device_hour: float | None = Field(
        None,
        gt=0,
        description="What an hour of this provider's device costs (any currency): estimates "
        "then give a cost, and jobs may set supervision.max_cost.",
    )
    memory_limit_bytes: int | None = Field(
        None,
        gt=0,
        description="The memory a job may use, to refuse one that will not fit; unset: what "
        "the device has available (CUDA's free memory, or the machine's available RAM).",
    )
    launcher: Launcher = Field(
        default_factory=LocalLauncher,
        description="How a job's worker is started: one local process, torchrun's ranks, or a "
        "Ray job on a cluster.",
    )
    watch_interval_seconds: float = Field(
        2.0, gt=0, le=60, description="How often the watchdog reads the workers' heartbeats."
    )

    @field_validator("stall_seconds")
    @classmethod
    def _every_phase(cls, given: dict[Phase, float]) -> dict[Phase, float]:
        return {**STALL_DEFAULTS, **given}  # the phases it leaves out keep their defaults


class LocalSessionsConfig(StrictModel):
    """Interactive training sessions: each training model in a worker process of its own."""

    storage_dir: UserPath = Field(description="Sessions, their models' logs and saved states.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="Per worker; torch's default.")
    max_live_models: int = Field(
        4, ge=1, le=256, description="Workers alive at once; a model past them is refused (429)."
    )
    session_timeout_seconds: float = Field(
        600.0,
        ge=5,
        description="A session not heard from (a heartbeat or a call) for this long is finished.",
    )
    stall_seconds: float = Field(
        120.0,
        ge=2,
        description="A worker whose heartbeat (written every second, busy or idle) is older "
        "than this is wedged: it is killed, and its model's calls fail saying so.",
    )
    watch_interval_seconds: float = Field(
        2.0, gt=0, le=60, description="How often the watchdog reads the workers' heartbeats."
    )
