from pydantic import Field, SecretStr, field_validator

from llama_post.schema import StrictModel, UserPath


class RemoteLlamaPostConfig(StrictModel):
    """Another llama-post server that serves this API (a trainer box, a data box)."""

    base_url: str = Field(
        pattern=r"^https?://[^/\s@?#]+(/[^\s@?#]*)?$",
        description="The remote llama-post (`http://trainer:8321`). No credentials in it: give "
        "`api_key`.",
    )
    api_key: SecretStr | None = Field(None, description="A key of the remote, if it has auth.")
    request_timeout: float = Field(120.0, gt=0, le=3600, description="Seconds per request.")
    max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Resends of an idempotent request (GET, PUT, DELETE) never answered; a POST "
        "is resent only when it could not be sent at all.",
    )
    optional: bool = Field(
        False, description="Start even when the remote is down (health says Degraded)."
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # `${env.TRAINER_API_KEY:=}` left unset

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")


class RemotePostTrainingConfig(RemoteLlamaPostConfig):
    storage_dir: UserPath = Field(
        description="The jobs this server started on the remote, and whether each one's final "
        "checkpoint is served here yet (SQLite)."
    )
    poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often unfinished remote jobs are read."
    )
