from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from llama_post.schema import StrictModel

# Ids may hold `/` (`HuggingFaceTB/SmolLM2-135M-Instruct`); every segment starts with a letter or
# digit, so none is empty, `.` or `..`.
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*(/[A-Za-z0-9][A-Za-z0-9._:-]*)*$"
ModelId = Annotated[
    str,
    Field(
        pattern=MODEL_ID_PATTERN,
        max_length=256,
        examples=["HuggingFaceTB/SmolLM2-135M-Instruct", "ft/sft-0123456789abcdef"],
    ),
]


LocalPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]+$",
        description="A path on the server, under a folder its provider may read.",
    ),
]


class HuggingFaceSource(StrictModel):
    """A local Hugging Face model folder (config.json, weights, tokenizer)."""

    type: Literal["huggingface"]
    path: LocalPath


class GGUFSource(StrictModel):
    """A GGUF file, converted once into a Hugging Face folder in the provider's cache.

    Give a `path`, or a Python `package` that ships the file and the `file` name inside it.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"required": ["package"], "properties": {"package": {"type": "string"}}},
            "then": {
                "required": ["file"],
                "properties": {"path": {"type": "null"}, "file": {"type": "string"}},
            },
            "else": {"required": ["path"], "properties": {"path": {"type": "string"}}},
        },
    )

    type: Literal["gguf"]
    path: LocalPath | None = None
    package: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = Field(None, pattern=r"^[^/\\]+\.gguf$")


class AdapterSource(StrictModel):
    """A PEFT LoRA adapter folder, served over the base model `base_model` without reloading it."""

    type: Literal["adapter"]
    path: LocalPath
    base_model: str


class ProviderModelSource(StrictModel):
    """A model the provider's upstream already serves (a vLLM started with `--model`), named by
    the upstream's own id. Remote providers register theirs at start."""

    type: Literal["provider_model"]
    provider_model_id: str = Field(min_length=1, max_length=256)


class ArchiveSource(StrictModel):
    """A checkpoint archive (a tar or tar.gz of an adapter's or a full model's folder): an
    uploaded file (`file_id`, through the Files API) or a URL (a remote llama-post's
    `.../checkpoints/{checkpoint}/archive`). It is unpacked into the server's imported models
    folder and registered as the adapter (over `base_model`) or full model it holds."""

    type: Literal["archive"]
    file_id: str | None = Field(None, min_length=1, max_length=256)
    url: str | None = Field(None, pattern=r"^https?://[^\s@]+$", max_length=4096)
    base_model: str | None = Field(
        None, description="The base an adapter is served over; leave out for a full model."
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The digest it must have (a URL's own `x-llama-post-sha256` is checked too).",
    )


class SamplingDefaults(StrictModel):
    """Sampling a request to this model gets for each knob it leaves unset; a set value wins."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, ge=0.1, le=10.0)  # as inference's

    def over(self, fallback: SamplingDefaults) -> SamplingDefaults:
        """These values, and `fallback`'s where these leave a knob unset."""
        return fallback.model_copy(update=self.model_dump(exclude_none=True))


ModelSource = Annotated[
    HuggingFaceSource | GGUFSource | AdapterSource | ProviderModelSource | ArchiveSource,
    Field(discriminator="type"),
]


class ModelWeights(BaseModel):
    """Where this server can read a model's weights, whichever provider serves it: post-training
    starts from them. `path` is a Hugging Face folder (an adapter's base), `adapter_path` an
    adapter's PEFT folder."""

    path: str
    adapter_path: str | None = None


class RegisterModelRequest(StrictModel):
    model_id: str = Field(pattern=MODEL_ID_PATTERN, max_length=256)
    source: ModelSource
    provider_id: str | None = Field(None, description="Needed only when several serve inference.")
    sampling_defaults: SamplingDefaults = Field(
        SamplingDefaults(),
        description="Sampling for requests that leave it unset; over the model's own "
        "generation_config.",
    )
    metadata: dict[str, JsonValue] = {}


class Model(BaseModel):
    """A servable model, in the shape of OpenAI's model object plus what a caller needs."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llama-post"
    provider_id: str
    provider_model_id: str | None = Field(
        None, description="The provider's own id for the model, where it differs from `id`."
    )
    kind: Literal["base", "adapter"]
    base_model: str | None = None
    context_length: int
    parameter_count: int | None = Field(None, description="Null where the provider cannot tell.")
    has_chat_template: bool
    weights: ModelWeights | None = Field(
        None,
        description="Where this server reads the weights (to fine-tune them); null when the "
        "provider holds them where this server cannot read.",
    )
    max_lora_rank: int | None = Field(
        None, description="The highest LoRA rank its provider serves over it; null: any."
    )
    dtype: str | None = Field(
        None,
        description="The type its provider computes it in (fp32, bf16, fp16); null where the "
        "provider cannot tell.",
        examples=["bf16"],
    )
    source: HuggingFaceSource | GGUFSource | AdapterSource | ProviderModelSource
    sampling_defaults: SamplingDefaults = Field(
        SamplingDefaults(), description="As registered (run.yaml or POST /v1/models)."
    )
    generation_config: SamplingDefaults = Field(
        SamplingDefaults(),
        description="What the model's own files recommend (its generation_config.json; an "
        "adapter's base's).",
    )
    metadata: dict[str, JsonValue] = {}

    def sampling(self) -> SamplingDefaults:
        """What a request that leaves a knob unset gets: registered, then the model's own."""
        return self.sampling_defaults.over(self.generation_config)


class LoadLoraAdapterRequest(StrictModel):
    """vLLM's `POST /v1/load_lora_adapter`, so that `remote::vllm` (or any vLLM client) can hot-load
    an adapter into llama-post as into vLLM."""

    lora_name: str = Field(pattern=MODEL_ID_PATTERN, max_length=256)
    lora_path: LocalPath
    base_model: str | None = Field(
        None, description="llama-post's own: the base model, needed when several are served."
    )
    load_inplace: bool = Field(False, description="vLLM's: replace an adapter of that name.")


class UnloadLoraAdapterRequest(StrictModel):
    lora_name: str = Field(pattern=MODEL_ID_PATTERN, max_length=256)
    lora_int_id: int | None = Field(None, description="vLLM's; ignored.")


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
    parameter_count: int | None = None
    has_chat_template: bool
    generation_config: SamplingDefaults = SamplingDefaults()
    provider_model_id: str | None = None
    weights: ModelWeights | None = None
    max_lora_rank: int | None = None
    dtype: str | None = None
