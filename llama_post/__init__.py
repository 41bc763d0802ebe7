"""llama-post: self-hosted post-training behind typed APIs.

Use it in-process with `LlamaPostClient("run.yaml")`, or serve it with `llama-post run run.yaml`.
"""

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
from llama_post.library_client import AsyncLlamaPostClient, LlamaPostClient
from llama_post.version import __version__

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
