from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.apis import Api
from llama_post.distribution.spec import Deps
from providers.inline.post_training.peft.config import PeftPostTrainingConfig

if TYPE_CHECKING:
    from llama_post.apis.post_training import PostTrainingJobs

__all__ = ["PeftPostTrainingConfig", "create"]


async def create(config: PeftPostTrainingConfig, deps: Deps, provider_id: str) -> PostTrainingJobs:
    from providers.inline.post_training.peft.post_training import PeftPostTraining
    from providers.jobs.local import LocalJobs

    trainer = PeftPostTraining()
    jobs = LocalJobs(config, deps[Api.datasets], deps[Api.models], provider_id, trainer)
    return jobs
