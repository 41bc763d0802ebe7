"""`remote::llama-post`: an API served by another llama-post, its routes called through the one
route table (`RemoteApi`), for files, datasets, inference and post-training."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.apis import Api
from llama_post.distribution.spec import Deps
from providers.remote.llama_post.config import RemoteLlamaPostConfig, RemotePostTrainingConfig

if TYPE_CHECKING:
    from providers.remote.llama_post.client import RemoteApi
    from providers.remote.llama_post.inference import RemoteInference
    from providers.remote.llama_post.post_training import RemotePostTraining

__all__ = [
    "RemoteLlamaPostConfig",
    "RemotePostTrainingConfig",
    "create_datasets",
    "create_files",
    "create_inference",
    "create_post_training",
]


async def create_files(config: RemoteLlamaPostConfig, deps: Deps, provider_id: str) -> RemoteApi:
    from providers.remote.llama_post.client import connect

    return await connect(Api.files, config, provider_id)


async def create_datasets(config: RemoteLlamaPostConfig, deps: Deps, provider_id: str) -> RemoteApi:
    from providers.remote.llama_post.client import connect

    return await connect(Api.datasets, config, provider_id)


async def create_inference(
    config: RemoteLlamaPostConfig, deps: Deps, provider_id: str
) -> RemoteInference:
    from providers.remote.llama_post.client import RemoteApi, connect
    from providers.remote.llama_post.inference import RemoteInference

    remote = await connect(Api.inference, config, provider_id)
    models, files = RemoteApi(Api.models, remote.client), RemoteApi(Api.files, remote.client)
    return RemoteInference(remote, models, files)


async def create_post_training(
    config: RemotePostTrainingConfig, deps: Deps, provider_id: str
) -> RemotePostTraining:
    from providers.remote.llama_post.client import connect
    from providers.remote.llama_post.post_training import RemotePostTraining

    remote = await connect(Api.post_training, config, provider_id)
    return RemotePostTraining(remote, config, deps[Api.models])
