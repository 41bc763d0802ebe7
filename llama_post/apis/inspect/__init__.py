from llama_post.apis.inspect.api import (
    HealthInfo,
    Inspect,
    ListProvidersResponse,
    ListRoutesResponse,
    ProviderInfo,
    RouteInfo,
    VersionInfo,
)

__all__ = [
    "HealthInfo",
    "Inspect",
    "ListProvidersResponse",
    "ListRoutesResponse",
    "ProviderInfo",
    "RouteInfo",
    "VersionInfo",
]
