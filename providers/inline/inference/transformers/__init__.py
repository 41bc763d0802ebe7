from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.distribution.spec import Deps
from providers.inline.inference.transformers.config import TransformersInferenceConfig

if TYPE_CHECKING:
    from llama_post.apis.inference import InferenceProvider

__all__ = ["TransformersInferenceConfig", "create"]


async def create(
    config: TransformersInferenceConfig, deps: Deps, provider_id: str
) -> InferenceProvider:
    from providers.inline.inference.transformers.inference import TransformersInference

    return TransformersInference(config, provider_id)
