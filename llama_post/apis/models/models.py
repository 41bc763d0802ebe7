from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue

from llama_post.schema import StrictModel

# Ids may hold `/` (`HuggingFaceTB/SmolLM2-135M-Instruct`); every segment starts with a letter or
# digit, so none is empty, `.` or `..`.
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*(/[A-Za-z0-9][A-Za-z0-9._:-]*)*$"


class HuggingFaceSource(StrictModel):
    """A local Hugging Face model folder (config.json, weights, tokenizer)."""

    type: Literal["huggingface"]
    path: str


class GGUFSource(StrictModel):
    """A GGUF file, converted once into a Hugging Face folder in the provider's cache.

    Give a `path`, or a Python `package` that ships the file and the `file` name inside it.
    """

    type: Literal["gguf"]
    path: str | None = None
    package: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = Field(None, pattern=r"^[^/\\]+\.gguf$")


class AdapterSource(StrictModel):
    """A PEFT LoRA adapter folder, served over the base model `base_model` without reloading it."""

    type: Literal["adapter"]
    path: str
    base_model: str


ModelSource = Annotated[HuggingFaceSource | GGUFSource | AdapterSource, Field(discriminator="type")]


class RegisterModelRequest(StrictModel):
    model_id: str = Field(pattern=MODEL_ID_PATTERN, max_length=256)
    source: ModelSource
    provider_id: str | None = Field(None, description="Needed only when several serve inference.")
    metadata: dict[str, JsonValue] = {}


class Model(BaseModel):
    """A servable model, in the shape of OpenAI's model object plus what a caller needs."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llama-post"
    provider_id: str
    kind: Literal["base", "adapter"]
    base_model: str | None = None
    context_length: int
    parameter_count: int
    has_chat_template: bool
    source: HuggingFaceSource | GGUFSource | AdapterSource
    metadata: dict[str, JsonValue] = {}


class ListModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class DeleteModelResponse(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class ModelInfo(BaseModel):
    """What an inference provider reports about a model it has loaded."""

    context_length: int
    parameter_count: int
    has_chat_template: bool
