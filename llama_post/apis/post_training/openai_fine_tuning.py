"""OpenAI's fine-tuning jobs, as its SDK sends and reads them (`/v1/fine_tuning/jobs`).

The routes are PostTraining's (`api.py`); the stack serves them by translating to and from the
native requests and job records (`llama_post.distribution.fine_tuning`), so every provider has
them. `method` chooses SFT, DPO or reinforcement (GRPO); a hyperparameter is a number or `auto`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_post.apis.post_training.configs import (
    AlgorithmConfig,
)
from llama_post.apis.post_training.graders import Grader
from llama_post.apis.post_training.jobs import (
    JobStatus,
)
from llama_post.apis.post_training.models import (
    lora_without_type,
)
from llama_post.schema import StrictModel

Auto = Literal["auto"]
# What "auto" means here (OpenAI picks by dataset size; these suit small datasets on a CPU).
AUTO_EPOCHS = 3
AUTO_BATCH_SIZE = 4
AUTO_BETA = 0.1

STATUS = {
    JobStatus.scheduled: "queued",
    JobStatus.in_progress: "running",
    JobStatus.completed: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.cancelled: "cancelled",
    JobStatus.unknown: "running",  # its trainer is out of reach; OpenAI has no such state
}
FineTuningStatus = Literal[
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled"
]


# -- requests ----------------------------------------------------------------------------------


# OpenAI answers an out-of-range hyperparameter with a 400 naming it; so do we (not pydantic's
# 422), and the spec states the same ranges.
LIMITS = {
    "batch_size": (1, 1024),
    "n_epochs": (1, 100),
    "learning_rate_multiplier": (1e-3, 100.0),
    "beta": (1e-3, 100.0),
}


def _auto_or(name: str, kind: str) -> dict[str, Any]:
    low, high = LIMITS[name]
    number = {"type": kind, "minimum": low, "maximum": high}
    return {"anyOf": [number, {"const": "auto", "type": "string"}]}


class Hyperparameters(StrictModel):
    batch_size: int | Auto = Field(
        "auto",
        description="Examples per step.",
        json_schema_extra=_auto_or("batch_size", "integer"),
    )
    learning_rate_multiplier: float | Auto = Field(
        "auto",
        description="Times the base rate: 2e-4 for LoRA, 2e-5 for full fine-tuning.",
        json_schema_extra=_auto_or("learning_rate_multiplier", "number"),
    )
    n_epochs: int | Auto = Field(
        "auto",
        description="Passes over the training file.",
        json_schema_extra=_auto_or("n_epochs", "integer"),
    )


class DpoHyperparameters(Hyperparameters):
    beta: float | Auto = Field(
        "auto",
        description="How far the policy may move; 0.1 if auto.",
        json_schema_extra=_auto_or("beta", "number"),
    )


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters. Its exploration and evaluation knobs have no
    counterpart in the GRPO recipe and are refused unless `auto` (the native
    `POST /v1/post-training/reinforce` exposes the recipe's own)."""

    compute_multiplier: float | Auto | None = Field(None, description="Only auto or unset.")
    eval_interval: int | Auto | None = Field(None, description="Only auto or unset.")
    eval_samples: int | Auto | None = Field(None, description="Only auto or unset.")
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = Field(
        None, description="Only default or unset: the models served here do not reason."
    )


class SupervisedMethod(StrictModel):
    hyperparameters: Hyperparameters = Hyperparameters()


class DpoMethod(StrictModel):
    hyperparameters: DpoHyperparameters = DpoHyperparameters()


class ReinforcementMethod(StrictModel):
    """Reinforcement fine-tuning: the GRPO recipe, its answers scored by `grader`."""

    grader: Grader
    hyperparameters: ReinforcementHyperparameters = ReinforcementHyperparameters()


METHODS = ("supervised", "dpo", "reinforcement")


class FineTuningMethod(StrictModel):
    """`type` names the method; only that method's settings may be given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": kind}}},
                    "then": {
                        "properties": {
                            other: {"type": "null"} for other in METHODS if other != kind
                        }
                    },
                }
                for kind in METHODS
            ]
        },
    )

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbSettings(StrictModel):
    project: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=128, description="Unset: the job's id.")
    entity: str | None = Field(None, max_length=128)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=20
    )


class WandbIntegration(StrictModel):
    """OpenAI's Weights & Biases integration, served by the job's W&B tracker in its default
    offline mode: the run is written in the job's folder, for `wandb sync` (the native
    `logger_config.trackers` can send it online)."""

    type: Literal["wandb"]
    wandb: WandbSettings


class CreateFineTuningJobRequest(StrictModel):
    """OpenAI's job request. `algorithm_config` (sent with the SDK's `extra_body`) is
    llama-post's own LoRA or full fine-tuning config; LoRA with its defaults if unset."""

    # The deprecated top-level `hyperparameters` serve a supervised job whose method gives none.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {
                "required": ["hyperparameters"],
                "properties": {"hyperparameters": {"not": {"type": "null"}}},
            },
            "then": {
                "properties": {
                    "method": {
                        "anyOf": [
                            {"type": "null"},
                            {
                                "properties": {
                                    "type": {"const": "supervised"},
                                    "supervised": {"type": "null"},
                                }
                            },
                        ]
                    }
                }
            },
        },
    )

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$",
        description="Up to 40 letters, digits, `-`, `_`; made part of the job and model ids.",
    )
    seed: int | None = None
    method: FineTuningMethod | None = None
    hyperparameters: Hyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of `method`; taken for supervised jobs."
    )
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    integrations: list[WandbIntegration] | None = Field(
        None, max_length=8, description="Weights & Biases runs that get the job's metrics."
    )
    algorithm_config: AlgorithmConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _lora_by_default(cls, data: Any) -> Any:
        return lora_without_type(data, "algorithm_config")


class PageRequest(StrictModel):
    after: str | None = Field(None, description="The last id of the previous page.")
    limit: int = Field(20, ge=1, le=100)


class ListFineTuningJobsRequest(PageRequest):
    metadata: dict[str, str] | None = Field(
        None, description="Only jobs with these labels; sent as `metadata[key]=value`."
    )

    @model_validator(mode="before")
    @classmethod
    def _bracketed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        labels = {k[9:-1]: v for k, v in data.items() if k.startswith("metadata[") and k[-1] == "]"}
        if not labels:
            return data
        rest = {k: v for k, v in data.items() if not (k.startswith("metadata[") and k[-1] == "]")}
        return {**rest, "metadata": labels}


# -- responses ---------------------------------------------------------------------------------


class FineTuningError(BaseModel):
    code: str
    message: str
    param: str | None = None


class ResolvedHyperparameters(BaseModel):
    batch_size: int
    learning_rate_multiplier: float
    n_epochs: int
    beta: float | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    hyperparameters: ResolvedHyperparameters
    method: FineTuningMethod
    model: str
    organization_id: str = "local"
    result_files: list[str] = []
    seed: int
    status: FineTuningStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[WandbIntegration] | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
