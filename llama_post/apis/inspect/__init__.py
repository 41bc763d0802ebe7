from llama_post.apis.inspect.api import (
    HealthInfo,
    Inspect,
    ListProvidersResponse,
    ListRoutesResponse,
    ProviderHealth,
    ProviderInfo,
    RouteInfo,
    VersionInfo,
)

__all__ = [
    "HealthInfo",
    "Inspect",
    "ListProvidersResponse",
    "ListRoutesResponse",
    "ProviderHealth",
    "ProviderInfo",
    "RouteInfo",
    "VersionInfo",
]
