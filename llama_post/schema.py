"""The declarations an API Protocol is written with: `@webmethod`, and the few transport types.

`@webmethod` records a route and an HTTP method on a Protocol method, and nothing else: it never
touches the function or its signature. Stack it to give one method several routes (compatibility
aliases). Everything else is read from the method's type hints by `llama_post.routes`:

- path parameters are the `{names}` in the route (`{model_id:path}` lets an id contain `/`);
- the one `request` parameter is a pydantic model: the JSON body, the query string for GET and
  DELETE, or a multipart form when it subclasses `MultipartRequest`;
- the return type is a pydantic model (JSON), `AsyncIterator[Model]` (a stream, served as
  server-sent events) or `FileContent` (raw bytes, streamed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO, TypeVar

from pydantic import BaseModel, ConfigDict, WithJsonSchema

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class WebMethod:
    route: str
    method: str
    tags: tuple[str, ...] = ()


def webmethod(*, route: str, method: str, tags: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Declare that the decorated Protocol method is served at `method route`."""
    declared = WebMethod(route=route, method=method.upper(), tags=tags)

    def mark(fn: F) -> F:
        fn.__dict__.setdefault("__webmethods__", []).append(declared)
        return fn

    return mark


def webmethods_of(fn: object) -> list[WebMethod]:
    found: list[WebMethod] = getattr(fn, "__webmethods__", [])
    return list(reversed(found))  # decorators apply bottom-up; keep the order they are written


class StrictModel(BaseModel):
    """Request and config models: an unknown key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class UploadedFile:
    """A file part of a multipart request: a name and a readable binary stream."""

    filename: str
    file: BinaryIO
    content_type: str = "application/octet-stream"


Upload = Annotated[UploadedFile, WithJsonSchema({"type": "string", "format": "binary"})]


class MultipartRequest(StrictModel):
    """A request sent as multipart/form-data rather than JSON."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass
class FileContent:
    """Raw bytes answered as a download, streamed chunk by chunk."""

    chunks: AsyncIterator[bytes]
    media_type: str = "application/octet-stream"
    filename: str | None = None
    size: int | None = None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks])
