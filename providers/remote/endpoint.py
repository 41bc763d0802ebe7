"""What every remote provider's config says about the server it talks to.

`remote::vllm` and `remote::llama-post` (and a remote provider generated from the route table
later) reach their upstream the same way: its URL, an optional key, a timeout, how often an
unanswered request is resent, and whether the stack may start while it is down.
"""

from pydantic import Field, SecretStr, field_validator

from llama_post.schema import StrictModel


class RemoteEndpointConfig(StrictModel):
    """The upstream server a remote provider calls."""

    base_url: str = Field(
        pattern=r"^https?://[^/\s@?#]+(/[^\s@?#]*)?$",
        description="The upstream server (`http://127.0.0.1:8000`). No credentials in it: give "
        "`api_key`.",
    )
    api_key: SecretStr | None = Field(None, description="The upstream's key, if it has auth.")
    request_timeout: float = Field(120.0, gt=0, le=3600, description="Seconds per request.")
    max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Resends of an idempotent request (GET, PUT, DELETE) never answered; a POST "
        "is resent only when it could not be sent at all.",
    )
    optional: bool = Field(
        False, description="Start even when the upstream is down (health says Degraded)."
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # `${env.VLLM_API_KEY:=}` or the like, left unset

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")
