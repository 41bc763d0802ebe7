from typing import Literal

from pydantic import Field

from llama_post.schema import StrictModel, UserPath


class TransformersInferenceConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="The type weights, activations and the KV cache are held in. auto: "
        "bfloat16 where the device computes it faster (CUDA with bf16; a CPU with AMX-BF16 or "
        "where a measured probe finds it faster), else float32. Adapters are served in it too.",
    )
    cache_dir: UserPath = Field(
        description="Where GGUF files are converted to Hugging Face folders."
    )
    model_dirs: list[UserPath] = Field(
        [], description="Folders model and adapter paths may lie in."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Sequences decoded together.")
    max_context_length: int | None = Field(None, ge=16, description="Caps the model's own.")
    torch_threads: int | None = Field(None, ge=1, description="Defaults to torch's choice.")
