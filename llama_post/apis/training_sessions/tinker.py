"""Tinker's training and sampling shapes (the `tinker` SDK 0.38.0's `types`), over the native
training sessions. Its requests carry keys llama-post does not read (`type`, `sdk_version`,
`tags`...): they are ignored, as the SDK ignores a server's extra keys. Requests are answered
at once with a future (`request_id`), whose result `retrieve_future` long-polls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_post.apis.training_sessions.tinker_wire import decode_forward_backward
from llama_post.schema import ProtobufRequest


class TinkerRequest(BaseModel):
    """A request of the SDK's: its keys llama-post does not read are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class TinkerCreateSession(TinkerRequest):
    tags: list[str] = []
    user_metadata: dict[str, Any] | None = None
    sdk_version: str | None = None
    display_name: str | None = None


class TinkerSessionCreated(BaseModel):
    type: Literal["create_session"] = "create_session"
    session_id: str


class TinkerSessionRef(TinkerRequest):
    session_id: str


class TinkerHeartbeat(BaseModel):
    type: Literal["session_heartbeat"] = "session_heartbeat"


class TinkerFinishSession(TinkerRequest):
    reason: dict[str, Any] | None = None
    detail: str | None = None


class TinkerFinished(BaseModel):
    session_id: str
    status: Literal["finished"] = "finished"


class TinkerLoraConfig(TinkerRequest):
    rank: int = Field(32, ge=1, le=512)
    seed: int | None = Field(None, ge=0, lt=2**63)
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class TinkerOptimizerConfig(TinkerRequest):
    type: Literal["adamw"] = Field("adamw", description="AdamW is the one optimizer served.")


class TinkerCreateModel(TinkerRequest):
    session_id: str
    model_seq_id: int = Field(ge=0, lt=1_000_000)
    base_model: str
    user_metadata: dict[str, Any] | None = None
    lora_config: TinkerLoraConfig | None = None
    optimizer_config: TinkerOptimizerConfig = TinkerOptimizerConfig()


class TinkerFuture(BaseModel):
    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class TinkerModelRef(TinkerRequest):
    model_id: str


class TinkerModelData(BaseModel):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = Field(None, description="A tokenizer folder on this server.")


class TinkerInfo(BaseModel):
    type: Literal["get_info"] = "get_info"
    model_id: str
    model_data: TinkerModelData
    is_lora: bool = True
    lora_rank: int | None = None


class TinkerTensor(TinkerRequest):
    data: list[float]
    dtype: Literal["float32", "int64"] = "float32"
    shape: list[int] | None = None


class TinkerChunk(TinkerRequest):
    type: Literal["encoded_text"] = "encoded_text"
    tokens: list[int]


class TinkerModelInput(TinkerRequest):
    chunks: list[TinkerChunk] = Field(min_length=1)


class TinkerDatum(TinkerRequest):
    model_input: TinkerModelInput
    loss_fn_inputs: dict[str, TinkerTensor]


class TinkerForwardBackwardInput(TinkerRequest):
    data: list[TinkerDatum] = Field(min_length=1)
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None


class TinkerForwardBackward(TinkerRequest, ProtobufRequest):
    """Sent as protobuf (`tinker_public.ForwardBackwardRequest`) by the SDK, or as this JSON."""

    model_id: str
    seq_id: int | None = None
    forward_backward_input: TinkerForwardBackwardInput
    forward_only: bool = False

    @classmethod
    def from_protobuf(cls, body: bytes) -> dict[str, Any]:
        return decode_forward_backward(body)


class TinkerAdamParams(TinkerRequest):
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


class TinkerOptimStep(TinkerRequest):
    model_id: str
    seq_id: int | None = None
    adam_params: TinkerAdamParams | None = None
    optimizer_params: dict[str, Any] | None = Field(
        None, description="Another optimizer's step: refused (AdamW is the one served)."
    )


class TinkerSaveWeights(TinkerRequest):
    model_id: str
    path: str | None = None
    seq_id: int | None = None
    overwrite: bool = False
    ttl_seconds: int | None = None
    user_metadata: dict[str, str] | None = None


class TinkerSaveForSampler(TinkerSaveWeights):
    sampling_session_seq_id: int | None = None


class TinkerLoadWeights(TinkerRequest):
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = Field(None, ge=0, lt=1_000_000)
    base_model: str | None = None
    path: str
    optimizer: bool = False


class TinkerRetrieveFuture(TinkerRequest):
    request_id: str
    allow_metadata_only: bool = False


class TinkerCreateSamplingSession(TinkerRequest):
    session_id: str
    sampling_session_seq_id: int = Field(0, ge=0, lt=1_000_000)
    model_path: str | None = None
    base_model: str | None = None


class TinkerSamplingSession(BaseModel):
    sampling_session_id: str


class TinkerSampler(BaseModel):
    sampler_id: str
    base_model: str
    model_path: str | None = None


class TinkerSamplingParams(TinkerRequest):
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | list[int] | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_k: int = -1
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class TinkerSample(TinkerRequest):
    sampling_session_id: str
    seq_id: int | None = None
    num_samples: int = Field(1, ge=1, le=128)
    prompt: TinkerModelInput
    sampling_params: TinkerSamplingParams
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = Field(0, ge=0, le=20)
    topk_sample_logprobs: int = Field(0, ge=0, le=20)
    prompt_logprobs_last_n: int | None = Field(None, ge=1)
    target_prompt_logprobs: dict[str, Any] | None = Field(
        None, description="Refused: not served here."
    )
    prompt_alt_tokens_k: int = Field(0, description="Refused (but 0): not served here.")
