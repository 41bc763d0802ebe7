"""One generic provider: every method of an API Protocol forwarded to the remote's route for it.

`RemoteApi(api, client)` has a method for each route of the API (`ROUTES[api, name]`), with the
Protocol's own signature (so `Guarded` binds its arguments as for any provider): the path
parameters and the request go where the route puts them, and the answer comes back as the route
says, a model, a stream of events or a streamed download. No API has a hand-written client.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from llama_post.apis import PROTOCOLS, Api
from llama_post.apis.inspect import ProviderHealth
from llama_post.errors import ConfigError, LlamaPostError, UpstreamError
from llama_post.remote import ROUTES, RemoteClient
from llama_post.routes import Route, api_version
from providers.remote.llama_post.config import RemoteLlamaPostConfig


class RemoteApi:
    def __init__(self, api: Api, client: RemoteClient) -> None:
        self.api = api
        self.client = client
        self.routes = {name: r for (of, name), r in ROUTES.items() if of == api.value}
        self._methods: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {}

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        routes = self.__dict__.get("routes", {})
        if name not in routes:
            raise AttributeError(name)
        if name not in self._methods:
            self._methods[name] = self._method(routes[name])
        return self._methods[name]

    def _method(self, route: Route) -> Callable[..., Coroutine[Any, Any, Any]]:
        declared = types.MethodType(getattr(PROTOCOLS[self.api], route.name), self)
        signature = inspect.signature(declared)

        @functools.wraps(declared)  # its signature is the Protocol's
        async def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            return await self.forward(route, bound)

        return forward

    async def forward(self, route: Route, arguments: dict[str, Any]) -> Any:
        """Call `route` on the remote with the method's arguments; its answer, decoded."""
        path = {name: str(arguments[name]) for name in route.path_params}
        request: BaseModel | None = arguments.get("request")
        streamed = route.response_kind == "sse" or (
            route.response_kind == "json_or_sse" and getattr(request, "stream", False)
        )
        if streamed:
            event = route.response_model if route.response_kind == "sse" else route.stream_model
            assert event is not None
            return _parsed(await self.client.stream(route, request, **path), event)
        if route.response_kind == "binary":
            return await self.client.download(route, request, **path)
        assert route.response_model is not None
        answer = await self.client.call(route, request, **path)
        try:
            return route.response_model.model_validate(answer)
        except ValueError as exc:
            raise UpstreamError(
                f"provider {self.client.name!r}: {self.client.base_url} answered "
                f"{route.path} with something else than a {route.response_model.__name__}: {exc}"
            ) from None

    async def health(self) -> ProviderHealth:
        try:
            answer = await self.client.probe(ROUTES["inspect", "health"])
        except LlamaPostError as exc:
            return ProviderHealth(status="Error", message=exc.message)
        if answer.get("status") != "OK":
            return ProviderHealth(status="Error", message=f"the remote is {answer.get('status')}")
        return ProviderHealth()

    async def shutdown(self) -> None:
        await self.client.close()


async def _parsed(events: AsyncIterator[dict[str, Any]], model: type[BaseModel]) -> Any:
    async for event in events:
        yield model.model_validate(event)


async def connect(api: Api, config: RemoteLlamaPostConfig, provider_id: str) -> RemoteApi:
    """The remote, once it has said it serves the same route table as this server."""
    key = config.api_key.get_secret_value() if config.api_key else None
    client = RemoteClient(
        provider_id,
        config.url,
        api_key=key,
        timeout=config.request_timeout,
        max_retries=config.max_retries,
    )
    try:
        await _check_version(client, provider_id)
    except UpstreamError as exc:
        if not config.optional:
            await client.close()
            raise ConfigError(
                f"provider {provider_id!r} (remote::llama-post): base_url {config.url} is not "
                f"answering: {exc.message}. Start it first, or set `optional: true`"
            ) from None
    except BaseException:
        await client.close()
        raise
    return RemoteApi(api, client)


async def _check_version(client: RemoteClient, provider_id: str) -> None:
    answer = await client.probe(ROUTES["inspect", "version"])
    theirs, ours = answer.get("api_version"), api_version()
    if theirs != ours:
        raise ConfigError(
            f"provider {provider_id!r} (remote::llama-post): {client.base_url} speaks API "
            f"version {theirs} (llama-post {answer.get('version')}), this server speaks "
            f"{ours}; run the same llama-post on both"
        )
