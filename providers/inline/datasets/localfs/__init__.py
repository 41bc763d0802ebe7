from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.apis import Api
from llama_post.distribution.spec import Deps
from providers.inline.datasets.localfs.config import LocalDatasetsConfig

if TYPE_CHECKING:
    from llama_post.apis.datasets import Datasets

__all__ = ["LocalDatasetsConfig", "create"]


async def create(config: LocalDatasetsConfig, deps: Deps, provider_id: str) -> Datasets:
    from providers.inline.datasets.localfs.datasets import LocalDatasets

    return LocalDatasets(config, files=deps[Api.files])
