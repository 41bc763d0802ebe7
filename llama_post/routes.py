"""Compile the API Protocols into the one route table.

The table drives the HTTP server (`llama_post.server`), the OpenAPI spec (`llama_post.openapi`)
and the library client (`llama_post.library_client`); nothing else describes the routes.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, TypeAdapter

from llama_post.schema import (
    FileContent,
    MultipartRequest,
    WebMethod,
    created_ids,
    webmethods_of,
)

RequestKind = Literal["none", "json", "query", "multipart"]
ResponseKind = Literal["json", "sse", "json_or_sse", "binary"]


class Dispatcher(Protocol):
    """What serves a route table: the routes and the implementation behind each (the `Stack`)."""

    routes: list[Route]

    def call(self, route: Route) -> Any: ...


_PARAM = re.compile(r"{(\w+)(?::(\w+))?}")


@dataclass(frozen=True)
class Route:
    api: str
    name: str  # the Protocol method, looked up on the provider implementation
    method: str
    path: str  # Starlette form: `/v1/models/{model_id:path}`
    path_params: tuple[str, ...]
    carried_params: tuple[str, ...]  # `str` arguments sent in the query or JSON body
    request_model: type[BaseModel] | None
    request_kind: RequestKind
    response_model: type[BaseModel] | None  # for `sse`, the model of one event
    stream_model: type[BaseModel] | None  # for `json_or_sse`, the model of one event
    response_kind: ResponseKind
    compat: str | None  # the foreign client family the route serves
    alias: bool  # a further route of a method that has one already
    summary: str
    description: str
    creates: tuple[tuple[str, str], ...] = ()  # (id parameter, JSON pointer into the response)
    # The JSON schema of each id parameter (path or carried): its pattern, length, examples.
    param_schemas: dict[str, dict[str, Any]] = field(
        default_factory=dict, hash=False, compare=False
    )

    @property
    def tags(self) -> tuple[str, ...]:
        return (self.compat or self.api,)

    @property
    def carried_in_query(self) -> bool:
        """Whether the carried ids come in the query: a GET's or DELETE's, or beside a JSON
        request model (LLM Engine's `completions-sync?model_endpoint_name=`); else in the body."""
        return self.method in ("GET", "DELETE") or self.request_model is not None

    @property
    def openapi_path(self) -> str:
        return _PARAM.sub(lambda m: "{" + m.group(1) + "}", self.path)

    @property
    def operation_id(self) -> str:
        if not self.alias:
            return self.name
        return f"{self.name}_{re.sub(r'[^a-z0-9]+', '_', (self.compat or 'alias').lower())}"

    @property
    def primary(self) -> bool:
        """The method's own route: the one the library client and native clients use."""
        return not self.alias


class RouteError(TypeError):
    """A Protocol method does not fit the route rules; raised when the table is compiled."""


def compile_routes(protocols: Iterable[tuple[str, type]]) -> list[Route]:
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    operations: set[str] = set()
    for api, protocol in protocols:
        for name, fn in _methods(protocol):
            if not inspect.isfunction(fn):
                continue
            for i, declared in enumerate(webmethods_of(fn)):
                route = _compile_one(api, name, fn, declared, alias=i > 0)
                key = (route.method, route.openapi_path)
                if key in seen:
                    raise RouteError(f"{route.method} {route.path} is declared by {seen[key]} too")
                if route.operation_id in operations:
                    raise RouteError(f"{api}.{name}: two aliases for {route.compat!r}")
                seen[key] = f"{api}.{name}"
                operations.add(route.operation_id)
                routes.append(route)
    return routes


def _methods(protocol: type) -> list[tuple[str, object]]:
    """A Protocol's methods in the order they are written, those of the Protocols it extends
    first (`PostTraining` adds OpenAI's routes to `PostTrainingJobs`)."""
    found: dict[str, object] = {}
    for klass in reversed(protocol.__mro__):
        if klass.__module__ not in ("builtins", "typing"):
            found.update(vars(klass))
    return list(found.items())


def _compile_one(api: str, name: str, fn: object, declared: WebMethod, alias: bool) -> Route:
    path, method = declared.route, declared.method
    where = f"{api}.{name} ({method} {path})"
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters if p != "self"]  # type: ignore[arg-type]
    path_params = tuple(m.group(1) for m in _PARAM.finditer(path))
    for p in path_params:
        if p not in params or hints.get(p) is not str:
            raise RouteError(f"{where}: path parameter {p!r} must be a `str` argument")
    carried = tuple(p for p in params if p not in path_params and p != "request")
    for p in carried:
        if hints.get(p) is not str:
            raise RouteError(
                f"{where}: {p!r} is neither in the path nor a `str` for the query or body; "
                "besides ids, only one `request` argument is allowed"
            )
    rest = [p for p in params if p not in path_params and p not in carried]

    request_model: type[BaseModel] | None = None
    request_kind: RequestKind = "none"
    if carried:
        request_kind = "query" if method in ("GET", "DELETE") else "json"
    if rest:
        request_model = hints["request"]
        if not (isinstance(request_model, type) and issubclass(request_model, BaseModel)):
            raise RouteError(f"{where}: `request` must be a pydantic model")
        if issubclass(request_model, MultipartRequest):
            request_kind = "multipart"
        elif method in ("GET", "DELETE"):
            request_kind = "query"
        else:
            request_kind = "json"

    response_model, stream_model, response_kind = _response_of(where, hints.get("return"))
    doc = inspect.getdoc(fn) or name.replace("_", " ").capitalize()
    summary, _, description = doc.partition("\n")
    return Route(
        api=api,
        name=name,
        method=method,
        path=path,
        path_params=path_params,
        carried_params=carried,
        request_model=request_model,
        request_kind=request_kind,
        response_model=response_model,
        stream_model=stream_model,
        response_kind=response_kind,
        compat=declared.compat,
        alias=alias,
        summary=summary.strip(),
        description=description.strip(),
        creates=created_ids(fn),
        param_schemas=_param_schemas(fn, (*path_params, *carried)),
    )


def _param_schemas(fn: object, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """What an `Annotated[str, Field(pattern=...)]` id parameter declares, as JSON schema."""
    annotated = typing.get_type_hints(fn, include_extras=True)
    schemas = {}
    for name in names:
        schema = TypeAdapter(annotated[name]).json_schema()
        schema.pop("title", None)
        schemas[name] = schema
    return schemas


def _response_of(
    where: str, returned: object
) -> tuple[type[BaseModel] | None, type[BaseModel] | None, ResponseKind]:
    """A model (JSON), `AsyncIterator[Model]` (SSE), `FileContent`, or both a model and a stream
    (`Model | AsyncIterator[Event]`) for a method that streams when asked (`stream: true`)."""
    if returned is FileContent:
        return None, None, "binary"
    if _is_model(returned):
        return returned, None, "json"  # type: ignore[return-value]
    event = _stream_item(returned)
    if event is not None:
        return event, None, "sse"
    options = typing.get_args(returned) if isinstance(returned, types.UnionType) else ()
    models = [o for o in options if _is_model(o)]
    events = [e for e in map(_stream_item, options) if e is not None]
    if len(options) == 2 and len(models) == 1 and len(events) == 1:
        return models[0], events[0], "json_or_sse"
    raise RouteError(
        f"{where}: must return a pydantic model, AsyncIterator[model], both, or FileContent, "
        f"not {returned!r}"
    )


def _is_model(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _stream_item(value: object) -> type[BaseModel] | None:
    if typing.get_origin(value) is collections.abc.AsyncIterator:
        (item,) = typing.get_args(value)
        if _is_model(item):
            return item  # type: ignore[no-any-return]
    return None


def all_routes() -> list[Route]:
    """The route table of every API llama-post declares."""
    from llama_post.apis import PROTOCOLS

    return compile_routes((api.value, protocol) for api, protocol in PROTOCOLS.items())


def api_version() -> str:
    """A digest of the route table (each route's method and path): two servers that answer the
    same one can call each other's routes. A remote provider compares it at startup."""
    import hashlib

    table = "\n".join(sorted(f"{r.method} {r.openapi_path}" for r in all_routes()))
    return hashlib.sha256(table.encode()).hexdigest()[:12]
