"""What the provider registry holds: one `ProviderSpec` per provider type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from llama_post.apis import Api

Deps = Mapping[Api, Any]
"""The implementations of the APIs a provider depends on, ready to call."""

Factory = Callable[[Any, Deps, str], Awaitable[Any]]
"""`async def create(config, deps, provider_id) -> implementation`: imports its heavy code in its
body. `provider_id` is the id run.yaml gives this instance (what its models' records name)."""


@dataclass(frozen=True)
class ProviderSpec:
    api: Api
    provider_type: str
    config_class: type[BaseModel]
    factory: Factory
    deps: tuple[Api, ...] = ()
    description: str = ""


Registry = Mapping[tuple[Api, str], ProviderSpec]
ENTRY_POINT_GROUP = "llama_post"


def build_registry(specs: list[ProviderSpec]) -> dict[tuple[Api, str], ProviderSpec]:
    registry: dict[tuple[Api, str], ProviderSpec] = {}
    for spec in specs:
        key = (spec.api, spec.provider_type)
        if key in registry:
            raise ValueError(
                f"provider type {spec.provider_type!r} is registered twice for {spec.api}"
            )
        registry[key] = spec
    return registry


def installed_registry() -> Registry:
    """The registry the installed distribution declares (`[project.entry-points.llama_post]
    registry = "providers.registry:REGISTRY"`): the core names no provider module itself."""
    found = entry_points(group=ENTRY_POINT_GROUP, name="registry")
    if not found:
        raise RuntimeError(
            "no provider registry is installed (entry point llama_post:registry); "
            "install llama-post with `make setup` or hand Stack.build a registry"
        )
    registry: Registry = next(iter(found)).load()
    return registry
