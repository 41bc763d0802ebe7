"""LLM Engine's requests and responses, as `scale-llm-engine` 0.0.0b45 sends and parses them.

Its client sends every field of its request models, nulls included, so they are all optional
here; one this server cannot honour (`include_stop_str_in_output: true`) is a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from llama_post.schema import MultipartRequest, StrictModel, Upload, required_in_spec

# LLM Engine's job states (its `BatchJobStatus`).
FineTuneStatus = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"]


# -- completions -------------------------------------------------------------------------------


GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def _one_guided(schema: dict[str, Any]) -> None:
    """At most one `guided_*` field is set (not null)."""
    set_ = {"not": {"type": "null"}}
    schema["allOf"] = [
        {"not": {"required": [a, b], "properties": {a: set_, b: set_}}}
        for i, a in enumerate(GUIDED)
        for b in GUIDED[i + 1 :]
    ]


class CompletionRequest(StrictModel):
    """`completions-sync` and `completions-stream`: the model is the query's
    `model_endpoint_name`. The four `guided_*` fields constrain the output; give one."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_guided)

    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0.0, le=1.0, description="0 decodes greedily.")
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=16)
    return_token_log_probs: bool | None = False
    presence_penalty: float | None = Field(None, ge=0.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=-1, description="-1 (or 0): every token.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    include_stop_str_in_output: bool | None = Field(
        None,
        description="Only false: the stop sequence is never part of the output.",
        json_schema_extra={"enum": [False, None]},
    )
    guided_json: dict[str, JsonValue] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = None
    skip_special_tokens: bool | None = Field(
        True,
        description="Only true: special tokens are never part of the output.",
        json_schema_extra={"enum": [True, None]},
    )


class TokenOutput(BaseModel):
    token: str
    log_prob: float


class CompletionOutput(BaseModel):
    text: str
    num_prompt_tokens: int | None = None
    num_completion_tokens: int
    tokens: list[TokenOutput] | None = None


class CompletionSyncResponse(BaseModel):
    request_id: str
    output: CompletionOutput


class CompletionStreamOutput(BaseModel):
    text: str
    finished: bool
    num_prompt_tokens: int | None = None
    num_completion_tokens: int | None = None
    token: TokenOutput | None = None


class StreamErrorContent(BaseModel):
    error: str
    timestamp: str


class StreamError(BaseModel):
    status_code: int
    content: StreamErrorContent


class CompletionStreamResponse(BaseModel):
    """One event of a stream; an error after the stream began is the last, with `error`."""

    request_id: str
    output: CompletionStreamOutput | None = None
    error: StreamError | None = None


# -- batch completions -------------------------------------------------------------------------


class BatchModelConfig(BaseModel):
    """The model the batch runs on; the client's hardware and vLLM settings are accepted and
    left to the server."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)


class BatchContent(StrictModel):
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0.0, le=1.0)
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=16)
    return_token_log_probs: bool | None = False
    presence_penalty: float | None = Field(None, ge=0.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=-1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    skip_special_tokens: bool | None = Field(
        True, description="Only true.", json_schema_extra={"enum": [True, None]}
    )


class BatchCompletionsRequest(BaseModel):
    """`content` is required: this server reads no `input_data_path`. `output_data_path` is
    kept as the batch's metadata; the output is the batch's output file."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, json_schema_extra=required_in_spec("content")
    )

    model_config_: BatchModelConfig = Field(alias="model_config")
    content: BatchContent | None = None
    input_data_path: str | None = Field(
        None, description="Only null: send `content`.", json_schema_extra={"type": "null"}
    )
    output_data_path: str = Field(min_length=1, max_length=512)


class BatchCompletionsResponse(BaseModel):
    job_id: str


# -- fine-tunes --------------------------------------------------------------------------------


# What the server takes in `hyperparameters` (any other key is a 400 naming it).
HYPERPARAMETERS: dict[str, Any] = {
    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "epochs": {"type": "integer", "minimum": 1, "maximum": 10000},
    "warmup_ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "weight_decay": {"type": "number", "minimum": 0, "maximum": 1},
    "peft_config": {
        "type": "object",
        "properties": {
            "r": {"type": "integer", "minimum": 1, "maximum": 1024},
            "lora_alpha": {"type": "number", "exclusiveMinimum": 0},
            "lora_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "target_modules": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "additionalProperties": False,
    },
}


class CreateFineTuneRequest(StrictModel):
    """`training_file` (and `validation_file`) are uploaded CSVs with the columns `prompt` and
    `response`. `hyperparameters` takes `lr`, `warmup_ratio`, `epochs`, `weight_decay` and
    `peft_config` (`{r, lora_alpha, lora_dropout, target_modules}`); any other is a 400."""

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: dict[str, JsonValue] | None = Field(
        None, json_schema_extra={"properties": HYPERPARAMETERS, "additionalProperties": False}
    )
    wandb_config: dict[str, JsonValue] | None = Field(
        None, description="Only null.", json_schema_extra={"type": "null"}
    )
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,28}$")


class CreateFineTuneResponse(BaseModel):
    id: str


class FineTune(BaseModel):
    id: str
    fine_tuned_model: str | None = Field(
        None, description="The model to complete with once it succeeds: `ft/<id>`."
    )
    status: FineTuneStatus


class ListFineTunesResponse(BaseModel):
    jobs: list[FineTune]


class CancelFineTuneResponse(BaseModel):
    success: bool


class FineTuneEvent(BaseModel):
    timestamp: float | None = None
    message: str
    level: str


class FineTuneEventsResponse(BaseModel):
    events: list[FineTuneEvent]


# -- files -------------------------------------------------------------------------------------


class UploadFileRequest(MultipartRequest):
    file: Upload


class UploadFileResponse(BaseModel):
    id: str


class EngineFile(BaseModel):
    id: str
    filename: str
    size: int


class ListFilesResponse(BaseModel):
    files: list[EngineFile]


class FileContentResponse(BaseModel):
    id: str
    content: str


class DeleteResponse(BaseModel):
    deleted: bool


# -- model endpoints ---------------------------------------------------------------------------


class ModelEndpoint(BaseModel):
    """A served model, as an LLM Engine endpoint: its name is the model's id."""

    id: str
    name: str
    model_name: str
    source: Literal["hugging_face"] = "hugging_face"
    status: Literal["READY"] = "READY"
    inference_framework: Literal["vllm"] = Field(
        "vllm", description="The closest of the client's choices; served by llama-post."
    )
    inference_framework_tag: str | None = None
    num_shards: int = 1


class ListModelEndpointsResponse(BaseModel):
    model_endpoints: list[ModelEndpoint]


class ModelDownloadRequest(StrictModel):
    model_name: str = Field(min_length=1)
    download_format: Literal["hugging_face"] | None = "hugging_face"


class ModelDownloadResponse(BaseModel):
    urls: dict[str, str] = Field(description="An archive's name and a URL that fetches it.")
