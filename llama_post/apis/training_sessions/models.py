"""Interactive training sessions: the caller owns the loop, the server owns the model.

A session holds training models; a training model is a base model with a fresh LoRA adapter
and an AdamW optimizer, living in a worker process, trained one call at a time:
`forward_backward` accumulates gradients (as many calls as the caller likes), `optim_step`
applies them, `save_state` writes the adapter (and the optimizer) as a PEFT folder."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from llama_post.schema import StrictModel

SessionId = Annotated[str, Field(pattern=r"^ts-[0-9a-f]{16}$", examples=["ts-0123456789abcdef"])]
TrainingModelId = Annotated[
    str,
    Field(
        pattern=r"^ts-[0-9a-f]{16}:train:[0-9]{1,6}$",
        examples=["ts-0123456789abcdef:train:0"],
        description="`<session_id>:train:<index>`.",
    ),
]
StateName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
LossName = Literal["cross_entropy", "importance_sampling", "ppo"]
StateKind = Literal["state", "sampler"]
StateKindName = Annotated[str, Field(pattern=r"^(state|sampler)$", examples=["state"])]


class CreateSessionRequest(StrictModel):
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


class TrainingSession(BaseModel):
    session_id: str
    created_at: int
    last_heartbeat_at: int
    status: Literal["active", "finished"]
    training_models: list[str]
    metadata: dict[str, str] = {}


class TrainingSessionList(BaseModel):
    data: list[TrainingSession]


class FinishSessionRequest(StrictModel):
    reason: Literal["success", "errored", "interrupted"] = "success"


NOT_NOTHING_TRAINED: dict[str, JsonValue] = {
    "not": {
        "properties": {p: {"const": False} for p in ("train_attn", "train_mlp", "train_unembed")},
        "required": ["train_attn", "train_mlp", "train_unembed"],
    }
}


class LoraSettings(StrictModel):
    """The adapter a training model trains (Tinker's `LoraConfig`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=NOT_NOTHING_TRAINED)

    rank: int = Field(32, ge=1, le=512)
    alpha: float = Field(32.0, gt=0.0, description="LoRA's scale is alpha / rank.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Of the adapter's initial weights.")
    train_attn: bool = Field(True, description="q, k, v and o projections.")
    train_mlp: bool = Field(True, description="gate, up and down projections.")
    train_unembed: bool = Field(True, description="The output head.")

    @model_validator(mode="after")
    def _something_trained(self) -> LoraSettings:
        if not (self.train_attn or self.train_mlp or self.train_unembed):
            raise ValueError("at least one of train_attn, train_mlp, train_unembed must be true")
        return self


class CreateTrainingModelRequest(StrictModel):
    base_model: str = Field(description="A registered base model (with `from_state`: its base).")
    lora: LoraSettings | None = Field(
        None, description="Default: rank 32, every part trained; with `from_state`, its own."
    )
    from_state: str | None = Field(
        None,
        pattern=r"^ts-[0-9a-f]{16}:train:[0-9]{1,6}/(state|sampler)/[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Start from a saved state: `<training_model_id>/<kind>/<name>`.",
    )
    with_optimizer: bool = Field(False, description="With `from_state`: its optimizer too.")
    index: int | None = Field(
        None, ge=0, lt=1_000_000, description="The model's index in its session (default: next)."
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


class TrainingModel(BaseModel):
    training_model_id: str
    session_id: str
    base_model: str
    lora: LoraSettings
    tokenizer: str = Field(description="Where the base's tokenizer is: a folder on this server.")
    steps: int = Field(description="Optimizer steps taken.")
    status: Literal["ready", "failed", "finished"]
    error: str | None = None


class Datum(StrictModel):
    """One sequence: the tokens fed in, and for each position the token it should predict
    (the caller shifts them), with the loss's per-token inputs."""

    input_tokens: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    target_tokens: list[Annotated[int, Field(ge=0)]]
    weights: list[float] | None = Field(None, description="cross_entropy: each token's weight.")
    logprobs: list[float] | None = Field(
        None, description="importance_sampling, ppo: the sampler's log-probability of each target."
    )
    advantages: list[float] | None = Field(None, description="importance_sampling, ppo.")


class ForwardBackwardRequest(StrictModel):
    data: list[Datum] = Field(min_length=1, max_length=4096)
    loss: LossName = "cross_entropy"
    loss_config: dict[str, float] = Field(
        default_factory=dict, description="ppo: clip_low_threshold, clip_high_threshold."
    )
    forward_only: bool = Field(False, description="Compute the loss without gradients.")


class DatumOutput(BaseModel):
    logprobs: list[float] = Field(description="log p(target) at each position.")
    elementwise_loss: list[float]


class ForwardBackwardResult(BaseModel):
    outputs: list[DatumOutput]
    loss: float = Field(description="The loss summed over every token of every datum.")
    metrics: dict[str, float] = Field(description="Tinker's `name:reduction` form.")


class AdamParams(StrictModel):
    learning_rate: float = Field(1e-4, ge=0.0, le=10.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    eps: float = Field(1e-12, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    grad_clip_norm: float = Field(0.0, ge=0.0, description="0: no clipping.")


class OptimStepRequest(StrictModel):
    adam: AdamParams = Field(default_factory=AdamParams)


class OptimStepResult(BaseModel):
    step: int
    metrics: dict[str, float]


class SaveStateRequest(StrictModel):
    name: StateName
    kind: StateKind = Field(
        "state", description="state: the adapter and the optimizer; sampler: the adapter alone."
    )
    overwrite: bool = False


class LoadStateRequest(StrictModel):
    from_state: str = Field(
        pattern=r"^ts-[0-9a-f]{16}:train:[0-9]{1,6}/(state|sampler)/[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="A saved state of the same base and adapter settings.",
    )
    with_optimizer: bool = Field(False, description="Its optimizer too (a `state`'s).")


class SavedState(BaseModel):
    training_model_id: str
    kind: StateKind
    name: str
    reference: str = Field(description="`<training_model_id>/<kind>/<name>`: for `from_state`.")
    path: str = Field(description="The PEFT folder on this server.")
    base_model: str
    created_at: int
    size_bytes: int | None = Field(None, description="Its files' sizes, summed.")


class SavedStateList(BaseModel):
    data: list[SavedState]
