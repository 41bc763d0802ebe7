"""Local state: SQLite files and paths that stay inside their storage root."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from llama_post.errors import InvalidRequestError, NotFoundError


class Database:
    """One SQLite file, shared by a provider's coroutines and the threads it hands work to."""

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._setup(schema)

    def _setup(self, schema: str, patience: float = 30.0) -> None:
        """WAL mode and the schema. Switching a new file to WAL takes SQLite's exclusive lock
        without waiting on the busy handler, so processes opening one new file together (two
        servers on a new home) retry here rather than fail with 'database is locked'."""
        deadline = time.monotonic() + patience
        delay = 0.01
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(schema)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def check_id(value: str, pattern: re.Pattern[str], what: str) -> str:
    """An id that names something on disk: anything else than `pattern` is simply not there."""
    if not pattern.fullmatch(value):
        raise NotFoundError(f"no {what} {value!r}", param=f"{what}_id")
    return value


def resolve_path(path: str | Path, field: str, base: Path | None = None) -> Path:
    """`path` as the server would use it: taken from `base` when relative, `..` and symlinks
    resolved, and probed once, so a name the OS refuses (too long, a NUL byte) is a 400 naming
    `field` here rather than an OSError wherever it is first used."""
    try:
        resolved = ((base or Path()) / path).resolve()  # an absolute `path` replaces `base`
        resolved.exists()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequestError(f"{field}: not a usable path ({reason})", param=field) from None
    return resolved


def resolve_under(
    path: str | Path, roots: Sequence[Path], field: str, kind: Literal["file", "dir"] = "file"
) -> Path:
    """Resolve `path` (symlinks followed) and insist it is a `kind` under one of `roots`."""
    if not roots:
        raise InvalidRequestError(f"{field}: no directory is allowed to read from", param=field)
    resolved = resolve_path(path, field, roots[0])
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        # Not found, as an id that names nothing is: whether it exists out there is not told.
        allowed = ", ".join(str(r) for r in roots) or "none"
        raise NotFoundError(
            f"{field}: {path} is outside the directories this provider may read ({allowed})",
            param=field,
        )
    if not (resolved.is_file() if kind == "file" else resolved.is_dir()):
        raise NotFoundError(f"{field}: no {kind} at {path}", param=field)
    return resolved
