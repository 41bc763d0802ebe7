from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.apis import Api
from llama_post.distribution.spec import Deps
from providers.inline.post_training.peft.config import PeftPostTrainingConfig

if TYPE_CHECKING:
    from llama_post.apis.post_training import PostTraining

__all__ = ["PeftPostTrainingConfig", "create"]


async def create(config: PeftPostTrainingConfig, deps: Deps, provider_id: str) -> PostTraining:
    from providers.inline.post_training.peft.post_training import PeftPostTraining

    trainer = PeftPostTraining(config, datasets=deps[Api.datasets], models=deps[Api.models])
    await trainer.start()
    return trainer
