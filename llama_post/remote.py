"""The client side of the route table: calling a remote server's routes over HTTP.

A remote provider names the route it calls (`ROUTES["inference", "chat_completion"]`) and hands
a request model; the path, the method and where the request goes (JSON body or query string)
come from the route, as they do for the server and the library client. The remote answers with
JSON, or with server-sent events that are read one `data:` line at a time.

Failures become the error tree: an upstream 4xx is the same status with the upstream's message,
a 5xx is a 502, a timeout a 504, an upstream that cannot be reached (after the bounded retries)
a 503; every message names the provider and its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from llama_post.archives import SHA256_HEADER
from llama_post.errors import (
    LlamaPostError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    for_status,
)
from llama_post.routes import _PARAM, Route, all_routes
from llama_post.schema import FileContent, UploadedFile

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request to an upstream

ROUTES: dict[tuple[str, str], Route] = {(r.api, r.name): r for r in all_routes() if r.primary}
"""Each method's own route, by (api, method name)."""

RETRY_BACKOFF_SECONDS = 0.25
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class RemoteClient:
    """One remote server, for one provider: `name` and `base_url` are in every error it raises.

    A request that could not be sent (connection refused) is sent again, at most `max_retries`
    times, backing off; so is an idempotent one (GET, PUT, DELETE) whose connection was reset
    before an answer or that the upstream refused with 503. A POST that may have been acted on
    is not, nor is any request that was sent and timed out (the upstream may still be on it)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
        )

    async def call(self, route: Route, request: BaseModel | None = None, **path: str) -> Any:
        """The JSON a route answers (or its text: vLLM answers adapter loads in plain text)."""
        response = await self._send(route, request, path, stream=False)
        if "json" not in response.headers.get("content-type", ""):
            return response.text
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(
                f"provider {self.name!r}: {self.base_url} answered {route.path} with bad JSON"
            ) from None

    async def probe(self, route: Route) -> Any:
        """One quick try (no resends, a short timeout): for health checks."""
        try:
            response = await self.http.get(route.path, timeout=5.0)
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"provider {self.name!r}: cannot reach {self.base_url} ({type(exc).__name__})"
            ) from None
        if response.status_code >= 400:
            raise await self._error(response)
        return response.json()

    async def download(
        self, route: Route, request: BaseModel | None = None, **path: str
    ) -> FileContent:
        """A streamed download: its bytes as they come, with the size and sha256 it announced."""
        response = await self._send(route, request, path, stream=True)
        size = response.headers.get("content-length")
        disposition = response.headers.get("content-disposition", "")
        filename = disposition.rpartition("filename=")[2].strip('"') or None
        return FileContent(
            chunks=self._bytes(response),
            media_type=response.headers.get("content-type", "application/octet-stream"),
            filename=filename,
            size=int(size) if size and size.isdigit() else None,
            sha256=response.headers.get(SHA256_HEADER),
        )

    async def stream(
        self, route: Route, request: BaseModel | None, **path: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a streamed answer. The upstream's status is checked before this
        returns, so a refused request raises here, before a stream begins."""
        response = await self._send(route, request, path, stream=True)
        return self._events(response)

    async def close(self) -> None:
        await self.http.aclose()

    # -- sending -------------------------------------------------------------------------------

    async def _send(
        self, route: Route, request: BaseModel | None, path: dict[str, str], stream: bool
    ) -> httpx.Response:
        url = _PARAM.sub(lambda m: quote(path[m.group(1)], safe="/"), route.path)
        idempotent = route.method in IDEMPOTENT
        for attempt in range(self.max_retries + 1):
            built = self.http.build_request(route.method, url, **_encoded(route, request))
            try:
                response = await self.http.send(built, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                # refused or not connected: nothing was sent, so any request may go again; a
                # connection dropped before an answer may have been acted on: only idempotent
                sent = isinstance(exc, httpx.RemoteProtocolError)
                if attempt == self.max_retries or (sent and not idempotent):
                    raise UpstreamUnavailableError(
                        f"provider {self.name!r}: cannot reach {self.base_url} "
                        f"({type(exc).__name__}: {exc or 'no answer'}; "
                        f"tried {attempt + 1} times)"
                    ) from None
            except httpx.TimeoutException:
                raise UpstreamTimeoutError(
                    f"provider {self.name!r}: {self.base_url} did not answer "
                    f"{route.method} {url} within {self.timeout:g} s"
                ) from None
            except httpx.TransportError as exc:  # sent, then cut off: not sent again
                raise UpstreamUnavailableError(
                    f"provider {self.name!r}: {self.base_url} broke off {route.method} {url} "
                    f"({type(exc).__name__}: {exc or 'no answer'})"
                ) from None
            else:
                if response.status_code < 400:
                    return response
                last = attempt == self.max_retries or not idempotent
                if response.status_code != 503 or last:
                    raise await self._error(response)
                await response.aclose()
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    async def _error(self, response: httpx.Response) -> LlamaPostError:
        try:
            await response.aread()
        except httpx.TransportError:
            pass
        finally:
            await response.aclose()
        status = response.status_code
        message, param = _upstream_message(response)
        if status == 503:
            return UpstreamUnavailableError(f"provider {self.name!r}: {message}")
        if status >= 500 or status in (401, 403):  # 401/403: the provider's key, not the caller's
            return UpstreamError(f"provider {self.name!r}: upstream answered {status}: {message}")
        return for_status(status)(message, param=param)

    async def _bytes(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes(1 << 20):
                yield chunk
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"provider {self.name!r}: {self.base_url} broke off a download: {exc}"
            ) from None
        finally:
            await response.aclose()

    async def _events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise UpstreamError(
                        f"provider {self.name!r}: {self.base_url} streamed bad JSON"
                    ) from None
                if isinstance(event, dict) and "error" in event:
                    message, _ = _message_of(event)
                    raise UpstreamError(f"provider {self.name!r}: the stream failed: {message}")
                yield event
        except httpx.TimeoutException:
            raise UpstreamTimeoutError(
                f"provider {self.name!r}: {self.base_url} stopped streaming for {self.timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"provider {self.name!r}: {self.base_url} broke off the stream: {exc}"
            ) from None
        finally:
            await response.aclose()


def _encoded(route: Route, request: BaseModel | None) -> dict[str, Any]:
    """The keyword arguments of httpx's `build_request` that carry `request` as `route` takes
    it: a query string, a JSON body, or a multipart form whose files are streamed."""
    if request is None:
        return {"json": {}} if route.method not in ("GET", "DELETE") else {}
    uploads = {
        name: value
        for name in type(request).model_fields
        if isinstance(value := getattr(request, name), UploadedFile)
    }
    body = request.model_dump(mode="json", exclude_none=True, by_alias=True, exclude=set(uploads))
    if route.method in ("GET", "DELETE"):
        return {"params": body}
    if uploads:
        for upload in uploads.values():
            with contextlib.suppress(OSError, ValueError):
                upload.file.seek(0)  # a resend reads it again
        files = {n: (u.filename, u.file, u.content_type) for n, u in uploads.items()}
        return {"data": _form_fields(body), "files": files}
    return {"json": body}


def _form_fields(body: dict[str, Any]) -> dict[str, str]:
    """A request's fields as form fields; an object's as `name[key]`, as OpenAI's SDK sends
    them (`expires_after[seconds]`) and the server reads them back."""
    fields: dict[str, str] = {}
    for name, value in body.items():
        if isinstance(value, dict):
            fields |= {f"{name}[{key}]": str(v) for key, v in value.items()}
        else:
            fields[name] = str(value)
    return fields


def _upstream_message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        return _message_of(response.json())
    except ValueError:
        return response.text[:500] or response.reason_phrase, None
    except httpx.ResponseNotRead:  # the body was cut off
        return response.reason_phrase, None


def _message_of(body: Any) -> tuple[str, str | None]:
    """The message of OpenAI's and vLLM's error shapes, and of FastAPI's `detail`."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            if message is not None:
                param = error.get("param")
                return str(message), param if isinstance(param, str) else None
        elif isinstance(error, str):
            return error, None
    return json.dumps(body)[:500], None
