"""llama-post: self-hosted post-training behind typed APIs.

Use it in-process with `LlamaPostClient("run.yaml")`, or serve it with `llama-post run run.yaml`.
"""

from typing import TYPE_CHECKING, Any

from llama_post.errors import (
    ConfigError,
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    NotSupportedError,
    PayloadTooLargeError,
    RequestValidationError,
)
from llama_post.version import __version__

if TYPE_CHECKING:
    from llama_post.library_client import AsyncLlamaPostClient, LlamaPostClient


def __getattr__(name: str) -> Any:
    """The library clients, imported when first named: they bring the whole stack, which a
    training worker or a CLI command importing `llama_post.<module>` does not need."""
    if name in ("LlamaPostClient", "AsyncLlamaPostClient"):
        from llama_post import library_client

        return getattr(library_client, name)
    raise AttributeError(f"module 'llama_post' has no attribute {name!r}")


__all__ = [
    "AsyncLlamaPostClient",
    "ConfigError",
    "ConflictError",
    "InvalidRequestError",
    "LlamaPostClient",
    "LlamaPostError",
    "NotFoundError",
    "NotSupportedError",
    "PayloadTooLargeError",
    "RequestValidationError",
    "__version__",
]
