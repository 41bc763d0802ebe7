from __future__ import annotations

from typing import TYPE_CHECKING

from llama_post.distribution.spec import Deps
from providers.inline.files.localfs.config import LocalFilesConfig

if TYPE_CHECKING:
    from llama_post.apis.files import Files

__all__ = ["LocalFilesConfig", "create"]


async def create(config: LocalFilesConfig, deps: Deps, provider_id: str) -> Files:
    from providers.inline.files.localfs.files import LocalFiles

    return LocalFiles(config)
