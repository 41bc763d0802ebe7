"""The declarations an API Protocol is written with: `@webmethod`, and the few transport types.

`@webmethod` records a route and an HTTP method on a Protocol method, and nothing else: it never
touches the function or its signature. Stack it to give one method several routes (compatibility
aliases). Everything else is read from the method's type hints by `llama_post.routes`:

- path parameters are the `{names}` in the route (`{model_id:path}` lets an id contain `/`);
  a `str` argument the route does not name comes from the query string (GET, DELETE) or the
  JSON body (POST), as older clients send ids (`/job/status?job_uuid=...`);
- the one `request` parameter is a pydantic model: the JSON body, the query string for GET and
  DELETE, or a multipart form when it subclasses `MultipartRequest`;
- the return type is a pydantic model (JSON), `AsyncIterator[Model]` (a stream, served as
  server-sent events) or `FileContent` (raw bytes, streamed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema

F = TypeVar("F", bound=Callable[..., Any])


# The foreign client families a route may be declared for (`@webmethod(compat=...)`).
OPENAI_FINE_TUNING = "openai-fine-tuning"  # the openai SDK's `client.fine_tuning.jobs`
OPENAI_EVALS = "openai-evals"  # the openai SDK's `client.evals`: evals, runs, output items
V0_2 = "llama-stack-v0.2"  # llama-stack-client 0.2.x: ids in the query or body, /v1/openai/v1
V0_7 = "llama-stack-v0.7"  # llama-stack-client 0.7.0: /v1alpha post-training, /v1beta datasets
VLLM = "vllm"  # vLLM's own routes beside its OpenAI ones: hot-loading LoRA adapters
TINKER = "tinker"  # the tinker SDK (/api/v1): runs, checkpoints, training and sampling sessions
LLM_ENGINE = "llm-engine"  # Scale's scale-llm-engine client, under /llm-engine/v1: its own shapes


@dataclass(frozen=True)
class WebMethod:
    route: str
    method: str
    compat: str | None = None


def webmethod(*, route: str, method: str, compat: str | None = None) -> Callable[[F], F]:
    """Declare that the decorated Protocol method is served at `method route`.

    `compat` names the foreign client family the route is for (`openai`, `llama-stack-v0.2`):
    the route is tagged with it in the spec, and answers a state conflict with 400 rather than
    409, which those SDKs retry.
    """
    declared = WebMethod(route=route, method=method.upper(), compat=compat)

    def mark(fn: F) -> F:
        fn.__dict__.setdefault("__webmethods__", []).append(declared)
        return fn

    return mark


def creates(**ids: str) -> Callable[[F], F]:
    """Declare the ids a create method's response carries, each as a JSON pointer into it:
    `@creates(dataset_id="/identifier")`. The spec links the method's routes to every route
    that takes that id (get, delete, iterrows, cancel, ...) and to the list at the same path."""

    def mark(fn: F) -> F:
        fn.__dict__["__creates__"] = tuple(ids.items())
        return fn

    return mark


def created_ids(fn: object) -> tuple[tuple[str, str], ...]:
    found: tuple[tuple[str, str], ...] = getattr(fn, "__creates__", ())
    return found


def webmethods_of(fn: object) -> list[WebMethod]:
    found: list[WebMethod] = getattr(fn, "__webmethods__", [])
    return list(reversed(found))  # decorators apply bottom-up; keep the order they are written


class StrictModel(BaseModel):
    """Request and config models: an unknown key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


# A folder named in a config: `~` is the user's home, never a folder called `~` in the cwd.
# A default must be validated too (`Field(..., validate_default=True)`), or it stays as written.
UserPath = Annotated[Path, AfterValidator(Path.expanduser)]


def required_in_spec(*names: str) -> Callable[[dict[str, Any]], None]:
    """A model's `json_schema_extra`: the spec lists `names` as required and not null. The model
    itself takes them as optional, so that a request without one gets a 400 that says what to
    send (Llama Stack's API declares them optional) rather than a bare 422."""

    def extra(schema: dict[str, Any]) -> None:
        schema["required"] = [*schema.get("required", []), *names]
        for name in names:
            prop = schema["properties"][name]
            prop.pop("default", None)
            kept = [s for s in prop.pop("anyOf", []) if s != {"type": "null"}]
            if len(kept) == 1:
                prop.update(kept[0])
            elif kept:
                prop["anyOf"] = kept

    return extra


def only(value: Any) -> dict[str, Any]:
    """A field's `json_schema_extra` for a value the server refuses all others of (a feature
    the API declares but a provider does not implement): the spec says so."""
    return {"const": value}


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


class ProtobufRequest(BaseModel):
    """A request its client may send as protobuf (`application/x-protobuf`) rather than JSON:
    the model turns the bytes into the JSON they stand for, which is then validated as any."""

    @classmethod
    def from_protobuf(cls, body: bytes) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class FileContent:
    """Raw bytes answered as a download, streamed chunk by chunk."""

    chunks: AsyncIterator[bytes]
    media_type: str = "application/octet-stream"
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None  # sent as `x-llama-post-sha256` where the server knows it

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks])
