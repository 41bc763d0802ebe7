"""The HTTP server: one generic endpoint per route of the table, bound to the stack."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from uvicorn.config import LOGGING_CONFIG

from llama_post import logs
from llama_post.archives import SHA256_HEADER
from llama_post.auth import PRINCIPAL, KeyStore, RedactSecrets, is_loopback
from llama_post.codec import build_request, carried_arguments
from llama_post.distribution.checkpoints import BASE_URL
from llama_post.distribution.config import RunConfig, ServerConfig, load_run_config
from llama_post.distribution.stack import Stack
from llama_post.errors import (
    ConfigError,
    ConflictError,
    ErrorBody,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RequestValidationError,
)
from llama_post.openapi.generator import build_spec
from llama_post.routes import Dispatcher, Route
from llama_post.schema import LLM_ENGINE, TINKER, FileContent, ProtobufRequest, UploadedFile
from llama_post.server.auth import AuthMiddleware
from llama_post.server.errors import error_response
from llama_post.server.observe import RequestMiddleware, envelope
from llama_post.ui import ui_routes

log = logging.getLogger("llama_post.server")

MAX_JSON_BODY = 64 << 20
FORM_KEY = re.compile(r"([A-Za-z_]\w*)\[([A-Za-z_]\w*)\]")  # an object's field in a form
PROTOBUF = "application/x-protobuf"


def create_app(
    stack: Dispatcher, keys: KeyStore | None = None, settings: ServerConfig | None = None
) -> FastAPI:
    """The app serving `stack`'s routes, the web page (`/ui`) and `/metrics`, requiring `keys`
    when given."""
    settings = settings or ServerConfig()
    app = FastAPI(title="llama-post", docs_url="/docs", redoc_url=None)
    spec = build_spec(stack.routes)
    app.openapi = lambda: spec  # type: ignore[method-assign]
    for route in stack.routes:
        app.router.add_route(
            route.path,
            _endpoint(route, stack.call(route)),
            methods=[route.method],
            name=route.operation_id,
            include_in_schema=False,
        )
    app.router.routes.extend(ui_routes(stack, keys))
    app.router.add_route("/", _to_ui, methods=["GET"], include_in_schema=False)
    public: tuple[str, ...] = ()
    if settings.metrics.enabled:
        app.router.add_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
        public = ("/metrics",) if settings.metrics.public else ()
    app.add_middleware(BaseUrlMiddleware)
    if keys is not None:
        app.add_middleware(AuthMiddleware, keys=keys, public=public)
    app.add_middleware(
        RequestMiddleware, routes=app.router.routes, log_requests=settings.log_format == "json"
    )
    app.add_exception_handler(LlamaPostError, _on_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _on_http_error)  # type: ignore[arg-type]
    return app


async def _to_ui(request: Request) -> Response:
    return RedirectResponse("/ui", status_code=307)


async def _metrics(request: Request) -> Response:
    """Prometheus's text exposition of the process's metrics (`llama_post.telemetry`)."""
    principal = PRINCIPAL.get()
    if principal is not None and not principal.admin:
        raise PermissionDeniedError(
            "/metrics needs an admin key (its labels name every owner's models); or set "
            "server.metrics.public: true in run.yaml to serve it without a key"
        )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class BaseUrlMiddleware:
    """Remember the address a request reached the server by, for the URLs it hands out."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1")
            if host:
                BASE_URL.set(f"{scope.get('scheme', 'http')}://{host}")
        await self.app(scope, receive, send)


def _endpoint(route: Route, call: Callable[..., Awaitable[Any]]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handle(request)
        except LlamaPostError as exc:
            if (
                route.compat
                and route.compat != TINKER  # its SDK's own 409s (publishing a public one)
                and exc.status == ConflictError.status
                and not route.creates
            ):
                # Foreign SDKs retry a 409; for them a forbidding state is a plain bad request.
                # A create whose id is taken stays a 409: the SDK's own ConflictError.
                exc = InvalidRequestError(exc.message, param=exc.param, details=exc.details)
            elif route.compat != LLM_ENGINE:
                raise
            return error_response(exc, route.compat)
        except Exception:
            log.exception("%s %s raised", request.method, request.url.path)
            return error_response(
                LlamaPostError("internal server error; the server log has the details"),
                route.compat,
            )

    async def handle(request: Request) -> Response:
        kwargs: dict[str, Any] = {p: request.path_params[p] for p in route.path_params}
        form = None
        if route.request_kind == "multipart":
            form, data = await _read_form(request)
        elif route.request_kind == "json" and _is_protobuf(route, request):
            model = route.request_model
            assert model is not None and issubclass(model, ProtobufRequest)
            data = model.from_protobuf(await _read_body(request, MAX_JSON_BODY))
        elif route.request_kind == "json":
            data = await _read_json(request)
        elif route.request_kind == "query":
            data = dict(request.query_params)
        try:
            if route.carried_params:
                beside_body = route.request_kind == "json" and route.request_model is not None
                source = dict(request.query_params) if beside_body else data
                kwargs.update(carried_arguments(route, source))
            if route.request_model is not None:
                kwargs["request"] = build_request(route, data)
            result = await call(**kwargs)
        finally:
            if form is not None:
                await form.close()
        done_marker = route.compat != LLM_ENGINE and _reads_done_marker(request)
        return _respond(route, result, done_marker=done_marker)

    return endpoint


def _is_protobuf(route: Route, request: Request) -> bool:
    """A body sent as protobuf to a route whose request model reads it (Tinker's SDK)."""
    model = route.request_model
    sent = request.headers.get("content-type", "").split(";")[0].strip()
    return sent == PROTOBUF and model is not None and issubclass(model, ProtobufRequest)


async def _read_json(request: Request) -> Any:
    body = await _read_body(request, MAX_JSON_BODY)
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}", param="body") from None
    except RecursionError:
        raise InvalidRequestError(
            "the body is not valid JSON: it nests too deeply to parse", param="body"
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) once it is over `limit` bytes: at once when its Content-Length
    says so, else as it arrives (a chunked body declares no length), so no more than the limit
    is ever read."""
    too_large = PayloadTooLargeError(
        f"the body is over the {limit}-byte limit ({limit >> 20} MiB) of a JSON request",
        param="body",
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _read_form(request: Request) -> tuple[Any, dict[str, Any]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestValidationError(
            "Invalid request: send multipart/form-data with the file in the `file` part",
            param="file",
        )
    try:
        form = await request.form(max_files=1, max_fields=32)
    except HTTPException as exc:  # malformed multipart, or too many parts
        raise InvalidRequestError(f"the multipart body cannot be read: {exc.detail}") from None
    data: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            data[key] = UploadedFile(
                filename=value.filename or "",
                file=value.file,
                content_type=value.content_type or "application/octet-stream",
            )
        elif (nested := FORM_KEY.fullmatch(key)) is not None:  # `expires_after[seconds]`
            data.setdefault(nested[1], {})[nested[2]] = value
        else:
            data[key] = value
    return form, data


def _reads_done_marker(request: Request) -> bool:
    """Whether the client's SSE parser takes OpenAI's closing `data: [DONE]`.

    llama-stack-client before 0.7 parses every `data:` line as JSON and fails on it (as LLM
    Engine's client does: its routes never send it).
    """
    agent = _STAINLESS_AGENT.match(request.headers.get("user-agent", ""))
    if agent is None or agent.group(1) != "LlamaStackClient":
        return True
    return (int(agent.group(2)), int(agent.group(3))) >= (0, 7)


_STAINLESS_AGENT = re.compile(r"(?:Async)?(\w+)/Python (\d+)\.(\d+)")


def _respond(route: Route, result: Any, done_marker: bool = True) -> Response:
    if route.response_kind == "binary":
        assert isinstance(result, FileContent)
        headers = {}
        if result.size is not None:
            headers["content-length"] = str(result.size)
        if result.filename:
            headers["content-disposition"] = _attachment(result.filename)
        if result.sha256 is not None:
            headers[SHA256_HEADER] = result.sha256
        return StreamingResponse(result.chunks, media_type=result.media_type, headers=headers)
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(
        _sse(result, done_marker),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _sse(events: AsyncIterator[BaseModel], done_marker: bool = True) -> AsyncIterator[str]:
    """Each event as a `data:` line; then `data: [DONE]`, as OpenAI's streams end (unless the
    client cannot parse it).

    An error after the stream has begun arrives as a `data:` line holding `{"error": ...}`, which
    OpenAI's SDKs raise as an API error.
    """
    try:
        async for event in events:
            yield f"data: {event.model_dump_json()}\n\n"
    except LlamaPostError as exc:
        yield f"data: {json.dumps(envelope(exc.to_body()))}\n\n"
    except Exception:
        log.exception("stream failed")
        yield f"data: {json.dumps(envelope(LlamaPostError('internal error').to_body()))}\n\n"
    if done_marker:
        yield "data: [DONE]\n\n"


def _attachment(filename: str) -> str:
    from urllib.parse import quote

    return f"attachment; filename*=UTF-8''{quote(filename)}"


async def _on_error(request: Request, exc: LlamaPostError) -> Response:
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(exc)


async def _on_http_error(request: Request, exc: HTTPException) -> Response:
    messages = {
        404: f"no route {request.method} {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    kind = NotFoundError.type if exc.status_code == 404 else "http_error"
    body = ErrorBody(
        message=messages.get(exc.status_code, str(exc.detail)), type=kind, code=str(exc.status_code)
    )
    return JSONResponse(envelope(body), status_code=exc.status_code, headers=exc.headers)


async def serve(
    config: Path | str,
    host: str | None = None,
    port: int | None = None,
    log_format: logs.LogFormat | None = None,
) -> None:
    """Build the stack from `config` and serve it until SIGINT or SIGTERM. `log_format`
    (the CLI's, or LLAMA_POST_LOG_FORMAT) overrides run.yaml's `server.log_format`."""
    log_format = log_format or load_run_config(config)[0].server.log_format
    logs.configure(log_format)
    stack = await Stack.build(config)
    settings = stack.run.server.model_copy(update={"log_format": log_format})
    host = host or settings.host
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())
    try:
        keys = _keys(stack.run, host)
        app = create_app(stack, keys, settings)
    except BaseException:
        await stack.shutdown()
        raise
    port = settings.port if port is None else port
    json_logs = log_format == "json"
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            # JSON: uvicorn's records go through the root handler; its access lines give way to
            # the server's own (RequestMiddleware)
            log_config=None if json_logs else LOGGING_CONFIG,
            access_log=not json_logs,
            timeout_graceful_shutdown=10,
        )
    )
    told = asyncio.create_task(_tell_workers(server, stack, host, keys))
    try:
        await server.serve()
    finally:
        told.cancel()
        await stack.shutdown()
        if keys is not None:
            keys.close()


async def _tell_workers(
    server: uvicorn.Server, stack: Stack, host: str, keys: KeyStore | None
) -> None:
    """Once the server listens, where (the port it bound: 0 asks the OS for one), for the
    training workers that call its inference (`WorkerAccess`)."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    if stack.worker_access is not None and server.servers:
        port = server.servers[0].sockets[0].getsockname()[1]
        stack.worker_access.serving(host, port, keys)


def _keys(run: RunConfig, host: str) -> KeyStore | None:
    """The key store when auth is on: as run.yaml says, else whenever the server binds beyond
    loopback, and then only once a key exists."""
    enabled = run.auth.enabled if run.auth.enabled is not None else not is_loopback(host)
    if not enabled:
        return None
    keys = KeyStore(run.storage_dir)
    if keys.active() == 0:
        keys.close()
        why = "auth.enabled is true" if run.auth.enabled else f"the server binds {host}"
        raise ConfigError(
            f"API keys are required ({why}) and none exists: make one with "
            f"`llama-post keys create --owner <name> --admin <run.yaml>`"
        )
    log.info("API keys required: %d active", keys.active())
    return keys
