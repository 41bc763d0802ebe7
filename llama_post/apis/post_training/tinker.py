"""Tinker's REST shapes (the `tinker` SDK 0.38.0's `types`), for its RestClient: training runs
(llama-post's jobs) and their checkpoints. A checkpoint is `<kind>/<name>` in a run, `kind`
being `weights` (it holds training state), `sampler_weights` (weights alone) or, for
downloading its files, `external_weights`; its Tinker path is `tinker://<run>/<kind>/<name>`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_post.schema import StrictModel

KIND_OF_TYPE = {"training": "weights", "sampler": "sampler_weights"}
TinkerKind = Literal["weights", "sampler_weights", "external_weights"]
TinkerRunId = Annotated[
    str,
    Field(
        pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63}|ts-[0-9a-f]{16}:train:[0-9]{1,6})$",
        examples=["sft-0123456789abcdef", "ts-0123456789abcdef:train:0"],
        description="A job, or a training session's model (its saved states are its checkpoints).",
    ),
]


class TinkerClientConfig(BaseModel):
    """What the SDK asks of a server before its first call; llama-post takes keys as they are."""

    pjwt_auth_enabled: bool = False


class TinkerDynamicConfig(BaseModel):
    refresh_interval_sec: int = 300


class TinkerHello(BaseModel):
    """What the SDK sends with its handshakes and telemetry (its version, events): read, kept
    nowhere."""

    model_config = ConfigDict(extra="allow")

    sdk_version: str | None = None


class TinkerAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"


class TinkerHealth(BaseModel):
    status: Literal["ok"] = "ok"


class TinkerSupportedModel(BaseModel):
    model_name: str
    max_context_length: int | None = None
    trainable: bool = True
    sampleable: bool = True


class TinkerCapabilities(BaseModel):
    supported_models: list[TinkerSupportedModel]


class TinkerCheckpoint(BaseModel):
    checkpoint_id: str = Field(description="`<kind>/<name>`, e.g. `weights/step-000010`.")
    checkpoint_type: Literal["training", "sampler", "external"]
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    expires_at: datetime | None = None


class TinkerCursor(BaseModel):
    offset: int
    limit: int
    total_count: int


class TinkerCheckpoints(BaseModel):
    checkpoints: list[TinkerCheckpoint]
    cursor: TinkerCursor | None = None


class TinkerTrainingRun(BaseModel):
    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    last_request_time: datetime
    corrupted: bool = False
    lora_rank: int | None = None
    last_checkpoint: TinkerCheckpoint | None = None
    last_sampler_checkpoint: TinkerCheckpoint | None = None
    user_metadata: dict[str, str] | None = None


class TinkerTrainingRuns(BaseModel):
    training_runs: list[TinkerTrainingRun]
    cursor: TinkerCursor


class TinkerPageRequest(StrictModel):
    limit: int = Field(20, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    access_scope: Literal["owned", "accessible"] = Field(
        "owned", description="owned: the caller's runs; accessible: those and published ones."
    )
    project_id: str | None = Field(None, description="Accepted; llama-post has no projects.")


class TinkerScopeRequest(StrictModel):
    access_scope: Literal["owned", "accessible"] = "owned"


class TinkerCheckpointPageRequest(StrictModel):
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class TinkerTTLRequest(StrictModel):
    ttl_seconds: int | None = Field(..., ge=1, le=10 * 365 * 86400)


class TinkerWeightsInfoRequest(StrictModel):
    tinker_path: str = Field(pattern=r"^tinker://[^/]+/[a-z_]+/[^/]+$")


class TinkerWeightsInfo(BaseModel):
    base_model: str
    is_lora: bool
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None


class TinkerExternalWeightsUrls(BaseModel):
    urls: dict[str, str] = Field(description="Each file of the checkpoint: its path -> a URL.")
    expires: datetime


class TinkerEmpty(BaseModel):
    """A 2xx the SDK reads nothing from."""
