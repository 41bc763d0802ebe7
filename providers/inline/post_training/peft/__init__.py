from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.apis import Api
from llama_post.distribution.spec import Deps
from providers.inline.post_training.peft.config import PeftPostTrainingConfig
from providers.jobs.config import LocalSessionsConfig

if TYPE_CHECKING:
    from llama_post.apis.post_training import PostTrainingJobs
    from llama_post.apis.training_sessions import InteractiveTraining

__all__ = ["LocalSessionsConfig", "PeftPostTrainingConfig", "create", "create_sessions"]


async def create(config: PeftPostTrainingConfig, deps: Deps, provider_id: str) -> PostTrainingJobs:
    from providers.inline.post_training.peft.post_training import PeftPostTraining
    from providers.jobs.local import LocalJobs

    trainer = PeftPostTraining()
    jobs = LocalJobs(config, deps[Api.datasets], deps[Api.models], provider_id, trainer)
    return jobs


async def create_sessions(
    config: LocalSessionsConfig, deps: Deps, provider_id: str
) -> InteractiveTraining:
    from providers.jobs.sessions import LocalSessions

    sessions = LocalSessions(config, deps[Api.models])
    sessions.start()
    return sessions
