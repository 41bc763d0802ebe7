"""What the provider registry holds: one `ProviderSpec` per provider type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from llama_post.apis import Api

Deps = Mapping[Api, Any]
"""The implementations of the APIs a provider depends on, ready to call."""

Factory = Callable[[Any, Deps], Awaitable[Any]]
"""`async def create(config, deps) -> implementation`: imports its heavy code in its body."""


@dataclass(frozen=True)
class ProviderSpec:
    api: Api
    provider_type: str
    config_class: type[BaseModel]
    factory: Factory
    deps: tuple[Api, ...] = ()
    description: str = ""


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
