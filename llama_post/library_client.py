"""In-process access to a distribution: the same providers, validation and errors, no HTTP.

    from llama_post import LlamaPostClient

    with LlamaPostClient("run.yaml") as client:
        page = client.datasets.iterrows("my-dataset", {"limit": 10})

Each API is an attribute (`client.files`, `client.datasets`, ...) whose methods are the API
Protocol's. A method takes its path parameters, then its request as a model, a dict, or keyword
arguments; the request is validated by the route table exactly as the server validates it.
`AsyncLlamaPostClient` returns what the Protocol returns; `LlamaPostClient` runs the stack on a
private event loop thread and turns streams into iterators and downloads into bytes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from llama_post.codec import build_request
from llama_post.distribution.spec import Registry
from llama_post.distribution.stack import Stack
from llama_post.routes import Dispatcher, Route
from llama_post.schema import FileContent

if TYPE_CHECKING:
    from llama_post.apis.batches import Batches
    from llama_post.apis.datasets import Datasets
    from llama_post.apis.files import Files
    from llama_post.apis.inference import Inference
    from llama_post.apis.inspect import Inspect
    from llama_post.apis.models import Models

T = TypeVar("T")


class ApiProxy:
    """One API of the stack, its methods dispatched through the route table."""

    def __init__(self, stack: Dispatcher, api: str) -> None:
        self._stack = stack
        self._routes = {r.name: r for r in stack.routes if r.api == api and r.primary}
        self._api = api

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        route = self._routes.get(name)
        if route is None:
            raise AttributeError(f"the {self._api} API has no method {name!r}")
        call = self._stack.call(route)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await call(**_arguments(route, args, kwargs))

        method.__name__ = name
        return method

    def __dir__(self) -> list[str]:
        return sorted(self._routes)


def _arguments(route: Route, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    positional = list(args)
    for name in route.path_params + route.carried_params:
        if name in kwargs:
            bound[name] = str(kwargs.pop(name))
        elif positional:
            bound[name] = str(positional.pop(0))
        else:
            raise TypeError(f"{route.name}() needs {name}")
    if route.request_model is None:
        if positional or kwargs:
            ids = route.path_params + route.carried_params
            raise TypeError(f"{route.name}() takes only {', '.join(ids) or 'nothing'}")
        return bound
    if len(positional) > 1:
        raise TypeError(f"{route.name}() takes one request after its path parameters")
    data = kwargs.pop("request", positional[0] if positional else {})
    if kwargs:
        data = {
            **(data if isinstance(data, dict) else data.model_dump(exclude_unset=True)),
            **kwargs,
        }
    bound["request"] = build_request(route, data)
    return bound


class AsyncLlamaPostClient:
    files: Files
    datasets: Datasets
    models: Models
    inference: Inference
    inspect: Inspect
    batches: Batches

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        for api in stack.impls:
            setattr(self, api.value, ApiProxy(stack, api))

    @classmethod
    async def from_config(
        cls,
        config: Path | str | dict[str, Any],
        env: dict[str, str] | None = None,
        registry: Registry | None = None,
    ) -> AsyncLlamaPostClient:
        """Start the distribution in this process (providers of `registry`, by default the
        installed one)."""
        return cls(await Stack.build(config, env, registry))

    async def close(self) -> None:
        await self.stack.shutdown()

    async def __aenter__(self) -> AsyncLlamaPostClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LlamaPostClient:
    """The blocking client: the stack runs on its own event loop in a background thread."""

    def __init__(
        self,
        config: Path | str | dict[str, Any],
        env: dict[str, str] | None = None,
        registry: Registry | None = None,
    ):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="llama-post-library"
        )
        self._thread.start()
        try:
            self._async = self._run(AsyncLlamaPostClient.from_config(config, env, registry))
        except BaseException:
            self._stop()
            raise
        self.stack = self._async.stack
        for api in self.stack.impls:
            setattr(self, api.value, _SyncProxy(self, getattr(self._async, api.value)))

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_await(coro), self._loop).result()

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        while True:
            try:
                yield self._run(anext(stream))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        try:
            self._run(self._async.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> LlamaPostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _await(coro: Awaitable[T]) -> T:
    return await coro


class _SyncProxy:
    def __init__(self, client: LlamaPostClient, proxy: ApiProxy) -> None:
        self._client = client
        self._proxy = proxy

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._proxy, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._client._run(method(*args, **kwargs))
            if isinstance(result, FileContent):
                return self._client._run(result.read())
            if isinstance(result, AsyncIterator):
                return self._client._iterate(result)
            return result

        call.__name__ = name
        return call

    def __dir__(self) -> list[str]:
        return dir(self._proxy)
