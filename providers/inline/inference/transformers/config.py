from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from llama_post.schema import StrictModel


class TransformersInferenceConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU (faster there than bf16), bfloat16 on CUDA."
    )
    cache_dir: Path = Field(description="Where GGUF files are converted to Hugging Face folders.")
    model_dirs: list[Path] = Field([], description="Folders model and adapter paths may lie in.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Sequences decoded together.")
    max_context_length: int | None = Field(None, ge=16, description="Caps the model's own.")
    torch_threads: int | None = Field(None, ge=1, description="Defaults to torch's choice.")

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("model_dirs")
    @classmethod
    def _expand_all(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser() for p in value]
