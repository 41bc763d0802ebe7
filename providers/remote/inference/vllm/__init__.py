from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.distribution.spec import Deps
from providers.remote.inference.vllm.config import VLLMInferenceConfig

if TYPE_CHECKING:
    from llama_post.apis.inference import InferenceProvider

__all__ = ["VLLMInferenceConfig", "create"]


async def create(config: VLLMInferenceConfig, deps: Deps, provider_id: str) -> InferenceProvider:
    from providers.remote.inference.vllm.inference import VLLMInference

    provider = VLLMInference(config, provider_id)
    try:
        await provider.start()
    except BaseException:
        await provider.shutdown()
        raise
    return provider
