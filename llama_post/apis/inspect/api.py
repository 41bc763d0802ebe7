from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field, JsonValue

from llama_post.schema import webmethod


class ProviderHealth(BaseModel):
    """One provider's health: `Error` when it cannot answer (its upstream is down)."""

    provider_id: str = ""
    status: Literal["OK", "Error"] = "OK"
    message: str | None = None


class HealthInfo(BaseModel):
    """`Degraded` when a provider cannot answer; the server itself is up either way."""

    status: Literal["OK", "Degraded"] = "OK"
    providers: list[ProviderHealth] = []


class VersionInfo(BaseModel):
    version: str
    api_version: str | None = Field(
        None,
        description="A digest of the route table; a remote llama-post provider requires its own.",
    )


class RouteInfo(BaseModel):
    route: str
    method: str
    api: str
    name: str
    streaming: bool
    provider_types: list[str]


class ListRoutesResponse(BaseModel):
    data: list[RouteInfo]


class ProviderInfo(BaseModel):
    api: str
    provider_id: str
    provider_type: str
    config: dict[str, JsonValue]
    health: dict[str, JsonValue] = Field(
        default_factory=lambda: dict[str, JsonValue](status="OK"),
        description="Llama Stack's shape: `status` OK, Error (with `message`), or Not "
        "Implemented for a provider that has no health check.",
    )


class ListProvidersResponse(BaseModel):
    data: list[ProviderInfo]


class Inspect(Protocol):
    """The running stack: health, version, routes and providers."""

    @webmethod(route="/v1/health", method="GET")
    async def health(self) -> HealthInfo:
        """Answer OK while the server is up."""
        ...

    @webmethod(route="/v1/version", method="GET")
    async def version(self) -> VersionInfo:
        """The llama-post version."""
        ...

    @webmethod(route="/v1/inspect/routes", method="GET")
    async def list_routes(self) -> ListRoutesResponse:
        """Every route served, with the API and provider types behind it."""
        ...

    @webmethod(route="/v1/inspect/providers", method="GET")
    @webmethod(route="/v1/providers", method="GET")
    async def list_providers(self) -> ListProvidersResponse:
        """Every provider of the distribution, with its health; secret config values are masked.

        For a key that is not an admin's, the server's folders in them read `(hidden)`.
        `/v1/providers` is Llama Stack's Providers API.
        """
        ...

    @webmethod(route="/v1/providers/{provider_id}", method="GET")
    async def inspect_provider(self, provider_id: str) -> ProviderInfo:
        """One provider (the first of that id, where two APIs' providers share it)."""
        ...
