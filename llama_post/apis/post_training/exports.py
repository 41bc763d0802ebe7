"""Taking a model out: an adapter merged into its base as a plain Hugging Face folder (registered
as a model), or any model written as one GGUF file (what llama.cpp, Ollama and LM Studio load).
Both are durable jobs of the post-training provider (`export_id`), run by a worker process."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from llama_post.apis.models.models import MODEL_ID_PATTERN
from llama_post.apis.post_training.jobs import JobStatus
from llama_post.apis.post_training.models import JOB_UUID_PATTERN
from llama_post.schema import StrictModel

ExportId = Annotated[str, Field(pattern=JOB_UUID_PATTERN, examples=["merge-0123456789abcdef"])]
CHECKPOINT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}/step-[0-9]{6,}$"
# what a GGUF file's weights are stored as: unquantized (f32, f16, bf16) or quantized in blocks
# of 32 (q8_0: 8 bits; q4_0: 4 bits, its embedding kept at q8_0 as llama.cpp's quantizer does)
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q4_0"]

# one of `model` and `checkpoint` (as `if`/`then`: a top-level oneOf reads as a union of types)
_ONE_SOURCE: JsonDict = {
    "if": {"required": ["model"], "properties": {"model": {"type": "string"}}},
    "then": {"properties": {"checkpoint": {"type": "null"}}},
    "else": {"required": ["checkpoint"], "properties": {"checkpoint": {"type": "string"}}},
}


class ExportSource(StrictModel):
    """Where the weights come from: a registered model, or one checkpoint of a job."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_SOURCE)

    export_id: str | None = Field(None, pattern=JOB_UUID_PATTERN, description="Default: made up.")
    provider_id: str | None = Field(
        None, description="The post-training provider that runs it; unset: the first."
    )
    model: str | None = Field(
        None,
        description="A registered model: an adapter such as `ft/<job>` (merged into its base), "
        "or a base model.",
        examples=["ft/sft-0123456789abcdef"],
    )
    checkpoint: str | None = Field(
        None,
        pattern=CHECKPOINT_REF_PATTERN,
        description="A job's checkpoint, `<job_uuid>/<checkpoint_id>` (a checkpoint's "
        "`identifier`), in place of `model`.",
        examples=["sft-0123456789abcdef/step-000004"],
    )


class MergeRequest(ExportSource):
    """Merge a LoRA adapter into its base: a plain Hugging Face folder (safetensors, config,
    tokenizer, generation config) served and registered as `model_id`."""

    model_id: str | None = Field(
        None,
        pattern=MODEL_ID_PATTERN,
        max_length=256,
        description="The merged model's id; default `merged/<export_id>`.",
    )


class ExportRequest(ExportSource):
    """Write a model as one GGUF file, with the tokenizer and chat template llama.cpp reads. An
    adapter is merged into its base first."""

    format: Literal["gguf"] = "gguf"
    outtype: GGUFType = Field("f16", description="How the weights are stored.")


class ExportJob(BaseModel):
    """A merge or export job: where it stands, and what it made."""

    export_id: str
    kind: Literal["merge", "gguf"]
    status: JobStatus
    provider_id: str
    model: str | None = None
    checkpoint: str | None = None
    outtype: GGUFType | None = None
    model_id: str | None = Field(
        None, description="merge: the model it registers (served once the job completes)."
    )
    created_at: int
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None
    filename: str | None = Field(None, description="What the download is named, once made.")
    size_bytes: int | None = None
    sha256: str | None = Field(None, description="gguf: the file's digest.")
    path: str | None = Field(None, description="The folder or file it made, on the server.")


class ListExportsResponse(BaseModel):
    data: list[ExportJob]
