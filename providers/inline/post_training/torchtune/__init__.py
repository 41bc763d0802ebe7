from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.apis import Api
from llama_post.distribution.spec import Deps
from providers.inline.post_training.torchtune.config import TorchtunePostTrainingConfig

if TYPE_CHECKING:
    from llama_post.apis.post_training import PostTrainingJobs

__all__ = ["TorchtunePostTrainingConfig", "create"]


async def create(
    config: TorchtunePostTrainingConfig, deps: Deps, provider_id: str
) -> PostTrainingJobs:
    from providers.inline.post_training.torchtune.post_training import TorchtunePostTraining
    from providers.jobs.local import LocalJobs

    trainer = TorchtunePostTraining(config, provider_id)
    jobs = LocalJobs(config, deps[Api.datasets], deps[Api.models], provider_id, trainer)
    return jobs
