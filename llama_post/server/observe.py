"""What the server tells about each request: its id, its metrics, and (JSON logs) its log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match

from llama_post import telemetry
from llama_post.auth import RedactSecrets
from llama_post.errors import ErrorBody, ErrorResponse, LlamaPostError
from llama_post.logs import REQUEST_ID, request_id

log = logging.getLogger("llama_post.server")
access = logging.getLogger("llama_post.access")
access.addFilter(RedactSecrets())  # the raw path of a checkpoint archive holds its token


def envelope(body: ErrorBody) -> dict[str, Any]:
    """An error's JSON body, naming the request it answers."""
    return ErrorResponse(error=body.model_copy(update={"request_id": REQUEST_ID.get()})).model_dump(
        mode="json"
    )


class RequestMiddleware:
    """The outermost layer: every request gets an id (its `X-Request-ID` when that is short and
    safe, else a new one), returned as `x-request-id` on every response (errors, streams and
    auth refusals too) and carried by `REQUEST_ID` while it is served. Each request is counted
    and timed by its route's template, once, when its response starts (for a stream, the time
    to its first byte). With `log_requests`, one line is logged per request when it ends."""

    def __init__(self, app: Any, routes: Sequence[BaseRoute], log_requests: bool) -> None:
        self.app = app
        self.routes = routes
        self.log_requests = log_requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id")
        rid = request_id(offered.decode("latin-1") if offered is not None else None)
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        answered: dict[str, Any] = {}

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
                answered.update(status=message["status"], latency=time.perf_counter() - started)
                self._count(scope, answered)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if answered:
                raise  # the response has begun: nothing else can be sent
            log.exception("%s %s raised", scope["method"], scope["path"])
            failure = LlamaPostError("internal server error; the server log has the details")
            response = JSONResponse(envelope(failure.to_body()), status_code=failure.status)
            await response(scope, receive, send_with_id)
        finally:
            if self.log_requests:
                self._log(scope, answered, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    def _count(self, scope: Any, answered: dict[str, Any]) -> None:
        route, params = self._route(scope)
        answered.update(route=route, params=params)
        labels = (scope["method"], route, str(answered["status"]))
        telemetry.HTTP_REQUESTS.labels(*labels).inc()
        telemetry.HTTP_LATENCY.labels(*labels).observe(answered["latency"])

    def _route(self, scope: Any) -> tuple[str, dict[str, Any]]:
        """The template of the route serving the request, and its path parameters. A request
        refused before routing (no key) is matched here."""
        route = scope.get("route")
        params: dict[str, Any] = scope.get("path_params", {})
        if route is None:
            for candidate in self.routes:
                match, child = candidate.matches(scope)
                if match is not Match.NONE:
                    route, params = candidate, child.get("path_params", {})
                    break
        template = getattr(route, "path_format", None)
        return (template if isinstance(template, str) else telemetry.UNMATCHED), params

    def _log(self, scope: Any, answered: dict[str, Any], seconds: float) -> None:
        status = answered.get("status")
        fields: dict[str, Any] = {
            "method": scope["method"],
            "route": answered.get("route", telemetry.UNMATCHED),
            "status": status,
            "latency_ms": round(answered.get("latency", seconds) * 1000, 2),
            "duration_ms": round(seconds * 1000, 2),
        }
        # the ids the path names (job, model, dataset, file...); never a capability's token
        for name, value in answered.get("params", {}).items():
            if name.endswith(("_id", "_uuid")):
                fields[name] = value
            if name in ("job_uuid", "fine_tuning_job_id"):
                fields["job_id"] = value
        access.info(
            "%s %s %s %.1fms",
            scope["method"],
            scope["path"],
            status,
            fields["latency_ms"],
            extra={"fields": fields},
        )
