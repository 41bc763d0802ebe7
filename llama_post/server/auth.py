"""Who is calling: every route but the open ones needs a valid key (`llama_post.auth`).

`AuthMiddleware` reads the key from `Authorization: Bearer`, `X-API-Key` (any case) or HTTP Basic
with the key as user (LLM Engine's client), and refuses a key in the query string. A scoped key
(a training job's worker calls inference with one) reaches its scope's routes alone (403). The
web page (`/ui`) keeps the key its user logged in with in an HttpOnly, SameSite=Strict cookie;
the cookie counts for the pages and for API requests that carry the page's `X-Llama-Post-UI`
header (which a form on another site cannot send), and a page asked for without a key redirects
to the login form.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.responses import RedirectResponse, Response

from llama_post.auth import (
    CAPABILITY_ROUTES,
    COOKIE,
    OPEN_ROUTES,
    PRINCIPAL,
    QUERY_KEYS,
    SCOPES,
    UI_HEADER,
    KeyStore,
    Principal,
    presented_key,
)
from llama_post.errors import AuthenticationError, LlamaPostError, PermissionDeniedError
from llama_post.server.errors import error_response


class AuthMiddleware:
    """Every route but the open ones needs a valid key; the caller becomes `PRINCIPAL`."""

    # the API's open routes (as the spec says, `needs_key`), the spec, and the login page
    OPEN = (*OPEN_ROUTES, "/openapi.json", "/docs", "/docs/oauth2-redirect", "/", "/ui/login")
    OPEN_PREFIXES = (*CAPABILITY_ROUTES, "/ui/static/")

    def __init__(self, app: Any, keys: KeyStore, public: tuple[str, ...] = ()) -> None:
        self.app = app
        self.keys = keys
        self.open = (*self.OPEN, *public)  # and what run.yaml opens (`server.metrics.public`)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.open or path.startswith(self.OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            principal = self._principal(scope)
        except LlamaPostError as exc:
            response: Response
            if _is_page(path) and exc.status == AuthenticationError.status:
                target = quote(path + (f"?{qs}" if (qs := scope["query_string"].decode()) else ""))
                response = RedirectResponse(f"/ui/login?next={target}", status_code=303)
                await response(scope, receive, send)
                return
            response = error_response(exc)
            if exc.status == AuthenticationError.status:
                response.headers["www-authenticate"] = 'Bearer realm="llama-post"'
            await response(scope, receive, send)
            return
        token = PRINCIPAL.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            PRINCIPAL.reset(token)

    def _principal(self, scope: Any) -> Principal:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if QUERY_KEYS & {name.lower() for name in query}:
            raise AuthenticationError(
                "an API key in the query string is refused (URLs end up in logs): send it as "
                "Authorization: Bearer <key> or X-API-Key"
            )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = presented_key(headers)
        if key is None and (_is_page(scope.get("path", "")) or UI_HEADER in headers):
            key = _cookie(headers.get("cookie", ""))
        if key is None:
            raise AuthenticationError(
                "this server needs an API key: send Authorization: Bearer <key> or X-API-Key "
                "(an admin makes keys with `llama-post keys create`)"
            )
        principal = self.keys.verify(key)
        path = scope.get("path", "")
        if principal.scope is not None and path not in SCOPES.get(principal.scope, ()):
            raise PermissionDeniedError(
                f"this key is a training job's, for {principal.scope} alone; it cannot call {path}"
            )
        return principal


def _is_page(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


def _cookie(header: str) -> str | None:
    """The login cookie's key, from a `Cookie` header."""
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None
