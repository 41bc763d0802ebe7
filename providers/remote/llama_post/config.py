from pydantic import Field

from llama_post.schema import UserPath
from providers.remote.endpoint import RemoteEndpointConfig


class RemoteLlamaPostConfig(RemoteEndpointConfig):
    """Another llama-post server that serves this API (a trainer box, a data box):
    `base_url` such as `http://trainer:8321`, `api_key` a key of the remote, if it has auth."""


class RemotePostTrainingConfig(RemoteLlamaPostConfig):
    storage_dir: UserPath = Field(
        description="The jobs this server started on the remote, and whether each one's final "
        "checkpoint is served here yet (SQLite)."
    )
    poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often unfinished remote jobs are read."
    )
