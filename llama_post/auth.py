"""API keys and who is calling.

A key belongs to an owner and may be an admin's. Keys are made by `llama-post keys create`, shown
once, and stored as the SHA-256 of their secret part (a key is 240 random bits: a slow hash adds
nothing). A key is `tml-` (Tinker's SDK refuses any other), a 12-hex id by which it is looked up,
and a 48-hex secret compared in constant time: the time a check takes does not depend on how much
of a key matched, nor on whether its id exists.

`PRINCIPAL` holds the caller of the request being served (`None`: auth is off, or an in-process
library call, which sees everything). The server's `AuthMiddleware` (`llama_post.server.auth`)
sets it from the key a request presents (`presented_key`, or the web page's login cookie).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_post.errors import AuthenticationError, InvalidRequestError
from llama_post.storage import Database

KEY = re.compile(r"tml-([0-9a-f]{12})([0-9a-f]{48})")
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
COOKIE = "llama_post_key"
UI_HEADER = "x-llama-post-ui"
QUERY_KEYS = {"api_key", "apikey", "key", "token", "access_token", "x-api-key"}
# API routes served without a key: health and version (for load balancers and probes), and the
# URLs that carry their own expiring, signed token (checkpoint archives and files, exports)
OPEN_ROUTES = ("/v1/health", "/v1/version", "/api/v1/healthz")
CAPABILITY_ROUTES = (
    "/v1/post-training/checkpoint-archives/",
    "/v1/post-training/checkpoint-files/",
    "/v1/post-training/export-downloads/",
)
# what a scoped key (made by the server for a training job's worker) may call, by scope
SCOPES = {"inference": ("/v1/chat/completions", "/v1/completions")}
SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    admin INTEGER NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS scoped_keys (
    key_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    scope TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
"""
_DUMMY = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class Principal:
    owner: str
    admin: bool
    key_id: str
    scope: str | None = None  # a scoped key's: it may call only the routes of `SCOPES[scope]`


PRINCIPAL: ContextVar[Principal | None] = ContextVar("llama_post_principal", default=None)


def needs_key(path: str) -> bool:
    """Whether an API route (its path, or its path template) needs a key when auth is on."""
    return path not in OPEN_ROUTES and not path.startswith(CAPABILITY_ROUTES)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


class KeyStore:
    def __init__(self, storage_dir: Path) -> None:
        self.db = Database(storage_dir / "keys.db", SCHEMA)

    def create(self, owner: str, admin: bool = False) -> tuple[str, str]:
        """A new key for `owner`: (its id, the key itself, which is not stored)."""
        if not re.fullmatch(OWNER_PATTERN, owner):
            raise InvalidRequestError(
                f"owner: {owner!r} must be 1-64 letters, digits, or _ . @ - (not first)",
                param="owner",
            )
        key_id, secret = secrets.token_hex(6), secrets.token_hex(24)
        self.db.execute(
            "INSERT INTO api_keys (key_id, owner, admin, secret_sha256, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, owner, int(admin), _sha256(secret), int(time.time())),
        )
        return key_id, f"tml-{key_id}{secret}"

    def create_scoped(self, owner: str, scope: str) -> tuple[str, str]:
        """A key the server makes for its own workers (a training job's, to call inference as
        the job's owner): never an admin's, valid for the routes of `SCOPES[scope]` alone, and
        revoked when the work ends (`revoke_scoped`). `llama-post keys list` does not show
        them."""
        key_id, secret = secrets.token_hex(6), secrets.token_hex(24)
        self.db.execute(
            "INSERT INTO scoped_keys (key_id, owner, scope, secret_sha256, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, owner, scope, _sha256(secret), int(time.time())),
        )
        return key_id, f"tml-{key_id}{secret}"

    def revoke_scoped(self, key_id: str | None = None) -> None:
        """Revoke one scoped key, or (None) every one still valid: a server that starts
        revokes those its last run left."""
        self.db.execute(
            "UPDATE scoped_keys SET revoked_at = ? WHERE revoked_at IS NULL"
            + (" AND key_id = ?" if key_id is not None else ""),
            (int(time.time()), *([key_id] if key_id is not None else [])),
        )

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.all(
            "SELECT key_id, owner, admin, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )
        return [dict(r) | {"admin": bool(r["admin"])} for r in rows]

    def revoke(self, key_id: str) -> bool:
        return (
            self.db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
            > 0
        )

    def active(self) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return int(row["n"]) if row else 0

    def verify(self, key: str) -> Principal:
        match = KEY.fullmatch(key)
        if match is None:
            raise AuthenticationError(
                "the API key is malformed: llama-post keys look like tml-<60 hex digits> "
                "(make one with `llama-post keys create`)"
            )
        key_id, secret = match.groups()
        row = self.db.one(
            "SELECT owner, admin, secret_sha256, revoked_at, NULL AS scope FROM api_keys "
            "WHERE key_id = ? UNION ALL SELECT owner, 0, secret_sha256, revoked_at, scope "
            "FROM scoped_keys WHERE key_id = ?",
            (key_id, key_id),
        )
        expected = row["secret_sha256"] if row is not None else _DUMMY
        matched = hmac.compare_digest(_sha256(secret), expected)
        if row is None or not matched or row["revoked_at"] is not None:
            raise AuthenticationError("the API key is not valid: unknown, or revoked")
        return Principal(
            owner=row["owner"], admin=bool(row["admin"]), key_id=key_id, scope=row["scope"]
        )

    def close(self) -> None:
        self.db.close()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, `X-API-Key: <key>`, or
    `Authorization: Basic` with the key as user (LLM Engine's client sends it so)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return headers.get("x-api-key") or _basic_user(auth)


def _basic_user(auth: str) -> str | None:
    if auth[:6].lower() != "basic ":
        return None
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


class RedactSecrets(logging.Filter):
    """Keeps keys sent in a query string, and the tokens of archive URLs, out of access logs."""

    NAMES = "|".join(map(re.escape, sorted(QUERY_KEYS)))
    QUERY = re.compile(rf"((?:{NAMES})=)[^&\s]*", re.I)
    TOKEN = re.compile(r"(/checkpoint-(?:archives|files)/)[^\s?]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.TOKEN.sub(r"\1<redacted>", self.QUERY.sub(r"\1<redacted>", a))
                if isinstance(a, str)
                else a
                for a in record.args
            )
        return True
