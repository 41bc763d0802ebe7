"""What a job answers: its status, progress, attempts, checkpoints, metrics, events, estimates and
preflight, and what its trackers recorded."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue

from llama_post.apis.post_training.models import (
    TrainingRequest,
)
from llama_post.schema import StrictModel


class JobStatus(StrEnum):
    scheduled = "scheduled"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    unknown = "unknown"  # a remote provider's job whose server cannot be reached now


class TrainingMetrics(BaseModel):
    epoch: int
    train_loss: float | None = None
    validation_loss: float | None = None
    perplexity: float | None = None


CHECKPOINT_ID_PATTERN = r"^step-[0-9]{1,12}$"
CheckpointId = Annotated[str, Field(pattern=CHECKPOINT_ID_PATTERN, examples=["step-000010"])]


class Checkpoint(BaseModel):
    identifier: str = Field(description="`<job_uuid>/<checkpoint_id>`.")
    checkpoint_id: str = Field("", description="Its name within the job: `step-000010`.")
    created_at: int
    epoch: int
    step: int
    post_training_job_id: str
    path: str
    training_metrics: TrainingMetrics | None = None
    model_id: str | None = Field(None, description="The model it is served as, once registered.")
    type: Literal["training", "sampler"] = Field(
        "sampler",
        description="training: it holds the state a job resumes from, and the weights; sampler: "
        "the weights alone (a job's final checkpoint).",
    )
    size_bytes: int | None = None
    public: bool = Field(False, description="Published: every key may read and download it.")
    expires_at: int | None = Field(None, description="When the server removes it (a TTL).")


class CheckpointList(BaseModel):
    data: list[Checkpoint]


class ListCheckpointsRequest(StrictModel):
    limit: int = Field(20, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class CheckpointPage(BaseModel):
    data: list[Checkpoint]
    total: int
    limit: int
    offset: int


class DeletedCheckpoint(BaseModel):
    identifier: str
    deleted: bool = True
    model_removed: str | None = Field(
        None, description="The model it was served as, unregistered with it."
    )


class CheckpointTTLRequest(StrictModel):
    ttl_seconds: int | None = Field(
        ..., ge=1, le=10 * 365 * 86400, description="From now; null clears the expiry."
    )


class ArchiveUrl(BaseModel):
    url: str = Field(description="Fetch it with no credentials: the URL carries its own token.")
    expires_at: int


class PostTrainingJob(BaseModel):
    job_uuid: str


class ListPostTrainingJobsResponse(BaseModel):
    data: list[PostTrainingJob]


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    peak_memory_bytes: int | None = Field(
        None, description="The worker's peak memory so far, where its trainer reports it."
    )


class MemoryEstimate(BaseModel):
    """Peak memory of a job's worker, in bytes, by what holds it."""

    weights: int = Field(description="The model's weights, in the type they are held in.")
    trained_state: int = Field(
        description="What training adds per trained parameter: its fp32 copy where the "
        "weights are not fp32, its gradient, the optimizer's state."
    )
    activations: int = Field(
        description="Kept for the backward pass of the largest micro-batch, under the job's "
        "activation checkpointing."
    )
    logits: int = Field(description="The output head's chunk of logits and its gradient.")
    runtime: int = Field(description="The interpreter, torch and its libraries.")
    peak: int = Field(
        description="The estimate: measured on this device by the calibration where it ran, "
        "else the sum of the parts."
    )
    available: int | None = Field(None, description="What the device has for it.")


class Calibration(BaseModel):
    """A few timed micro-steps of the job's largest micro-batch, run on this device."""

    seconds_per_micro_step: float
    flops_per_second: float = Field(description="Achieved on the calibration's micro-steps.")
    load_seconds: float
    save_seconds: float
    peak_memory: int
    rollout_prefill_seconds: float | None = Field(
        None,
        description="A method that samples its answers (GRPO): the prefill of one step's "
        "rollout batch, and its first token.",
    )
    rollout_decode_seconds: float | None = Field(
        None, description="Each further decode step of that batch (a token for every answer)."
    )
    cached: bool = Field(description="Measured before for the same model and settings.")


class TrainingEstimate(BaseModel):
    """What a job will take on this deployment's device, before it runs."""

    device: str
    dtype: Literal["fp32", "bf16"]
    optimizer_steps: int
    tokens: int = Field(description="Tokens run through the model, over every step.")
    trained_tokens: int = Field(description="Of those, the labelled ones the loss is taken on.")
    flops: float = Field(description="Model FLOPs, counted from the architecture.")
    memory: MemoryEstimate
    wall_seconds: float | None = Field(
        None, description="From the calibration; null where it did not run."
    )
    cost: float | None = Field(
        None, description="wall_seconds times the distribution's price_per_device_hour."
    )
    calibration: Calibration | None = None


class JobAttempt(BaseModel):
    """One run of a job's worker."""

    attempt: int = Field(description="1 for the first run.")
    started_at: int
    ended_at: int | None = None
    ended_because: str | None = Field(None, description="Why it ended, where it did not finish.")
    resumed_from: str | None = Field(None, description="The checkpoint it started from.")


class TrackerRun(BaseModel):
    """Where one of a job's trackers sends its metrics (the job's `logger_config.trackers`, in
    order)."""

    type: Literal["tensorboard", "mlflow", "wandb"]
    log_dir: str | None = Field(None, description="TensorBoard: the event files' folder.")
    tracking_uri: str | None = Field(None, description="MLflow: the tracking URI.")
    experiment_id: str | None = Field(None, description="MLflow: the run's experiment.")
    run_id: str | None = Field(None, description="MLflow or W&B: the run's id.")
    run_dir: str | None = Field(None, description="W&B: the run's local folder.")
    url: str | None = Field(None, description="W&B online: the run's page.")
    last_step: int = Field(0, description="The last step sent to it.")
    ended: bool = Field(
        False,
        description="The job has ended and its run is closed (MLflow: FINISHED, FAILED or "
        "KILLED by the job's status; W&B: finished with exit code 0, or 1 if the job did not "
        "complete). Every step is sent before the job's status changes; closing follows.",
    )
    error: str | None = Field(
        None, description="Its last failure, until it works again (the job goes on without it)."
    )


class PostTrainingJobStatusResponse(BaseModel):
    job_uuid: str
    status: JobStatus
    model: str
    method: Literal["sft", "dpo", "grpo"] = "sft"
    algorithm: Literal["LoRA", "full"]
    scheduled_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    resources_allocated: dict[str, JsonValue] | None = None
    checkpoints: list[Checkpoint] = []
    progress: JobProgress = JobProgress()
    error: str | None = None
    fine_tuned_model: str | None = None
    metadata: dict[str, str] = {}
    provider_id: str | None = Field(None, description="The provider running the job.")
    unreachable: str | None = Field(
        None,
        description="Why the server running the job cannot be reached now (status `unknown`: "
        "the job has not failed; it is read again when that server answers).",
    )
    estimate: TrainingEstimate | None = Field(
        None, description="What the job was estimated to take when it was created."
    )
    attempts: list[JobAttempt] = Field(
        [], description="Each run of its worker: retries after a stall, a lost worker, ..."
    )
    trackers: list[TrackerRun] = Field(
        [], description="Where its experiment trackers' runs are, once the job has started."
    )
    request: TrainingRequest | None = Field(
        None, description="The request the job runs, its defaults filled in."
    )


class PostTrainingJobArtifactsResponse(BaseModel):
    job_uuid: str
    checkpoints: list[Checkpoint]


class StepMetrics(BaseModel):
    step: int
    epoch: int
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = Field(None, description="Real tokens: padding excluded.")
    tokens: int | None = Field(None, description="Real tokens in the step's batches.")
    step_seconds: float | None = None
    validation_loss: float | None = None
    rewards_chosen: float | None = Field(None, description="DPO: mean beta * log-ratio, chosen.")
    rewards_rejected: float | None = Field(None, description="DPO: the same for rejected.")
    reward_margin: float | None = Field(None, description="DPO: chosen minus rejected reward.")
    reward_accuracy: float | None = Field(None, description="DPO: pairs ranked right.")
    validation_reward_margin: float | None = None
    validation_reward_accuracy: float | None = None
    reward_mean: float | None = Field(None, description="GRPO: mean grader score of the step.")
    reward_std: float | None = Field(None, description="GRPO: its standard deviation.")
    rewards_by_grader: dict[str, float] | None = Field(
        None, description="GRPO: mean score of each named sub-grader (a multi grader's)."
    )
    grader_errors: int | None = Field(
        None, description="GRPO: answers the grader failed on (each scored 0)."
    )
    zero_variance_groups: float | None = Field(
        None, description="GRPO: fraction of groups whose answers all scored the same."
    )
    kl: float | None = Field(None, description="GRPO: mean per-token KL to the starting model.")
    clip_fraction: float | None = Field(
        None, description="GRPO: fraction of answer tokens whose ratio was clipped."
    )
    completion_length: float | None = Field(None, description="GRPO: mean answer tokens.")
    sampling_tokens_per_second: float | None = Field(
        None, description="GRPO: answer tokens sampled per second."
    )
    sampling_seconds: float | None = None
    training_tokens_per_second: float | None = Field(
        None, description="GRPO: tokens (prompts and answers) through the loss per second."
    )
    validation_reward: float | None = Field(
        None, description="GRPO: mean grader score of one answer per held-out prompt."
    )
    timestamp: float


class JobMetricsResponse(BaseModel):
    job_uuid: str
    data: list[StepMetrics]


class JobLogsResponse(BaseModel):
    job_uuid: str
    lines: list[str]


class JobEvent(BaseModel):
    """One event of a job's stream: a log line, a metrics line, or its status."""

    type: Literal["log", "metrics", "status"]
    log: str | None = None
    metrics: StepMetrics | None = None
    status: PostTrainingJobStatusResponse | None = None


class RowProblem(BaseModel):
    row: int
    message: str


class TokenStats(BaseModel):
    min: int
    max: int
    mean: float
    p50: int
    p95: int


class PreflightResponse(BaseModel):
    rows: int
    validation_rows: int
    token_lengths: TokenStats
    trained_tokens: int
    truncated_rows: int
    max_seq_len: int
    steps_per_epoch: int
    total_steps: int
    example: str = Field(description="One rendered example; trained tokens are inside [[ ]].")
    errors: list[RowProblem]
    estimate: TrainingEstimate | None = Field(
        None,
        description="Work and memory on this device; time and cost where a calibration of "
        "the same setting is cached (POST /v1/post-training/estimate runs one).",
    )
