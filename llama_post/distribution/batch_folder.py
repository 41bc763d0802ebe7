"""One batch's folder and its lines: the input snapshot, the results as they are written, and
what a line of OpenAI's batch input must be.

The result files are the record of what ran: a line is done once its result is in `output.jsonl`
or `errors.jsonl` (each record written whole, by one append), so a batch resumed after a crash
reads them back and runs only the other lines.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llama_post.codec import build_request
from llama_post.errors import LlamaPostError, PayloadTooLargeError
from llama_post.routes import Route, all_routes

ROUTES: dict[str, Route] = {
    r.path: r
    for r in all_routes()
    if r.api == "inference" and r.primary and r.name in ("chat_completion", "completion")
}


@dataclass
class Line:
    """A line of the input: a request to run, or the reason it cannot be run."""

    number: int  # 1-based, as an editor counts them
    custom_id: str | None
    request: BaseModel | None = None
    problem: str | None = None
    param: str | None = None


class BatchFolder:
    """The one place a batch folder's file names are spelled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.input = path / "input.jsonl"
        self.output = path / "output.jsonl"
        self.errors = path / "errors.jsonl"

    def size(self, path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def lines(self, endpoint: str) -> Iterator[Line]:
        """Every non-blank input line, validated as a request to `endpoint`."""
        route = ROUTES[endpoint]
        seen: dict[str, int] = {}
        with self.input.open("rb") as source:
            for number, raw in enumerate(source, start=1):
                if raw.strip():
                    yield _parse(number, raw, route, seen)

    def done(self, lines: list[Line]) -> tuple[set[int], int, int]:
        """The numbers of the lines with a result, and how many completed and failed."""
        by_id = {line.custom_id: line.number for line in lines if line.request is not None}
        finished: set[int] = set()
        completed = failed = 0
        for record in _records(self.output):
            number = by_id.get(record.get("custom_id"))
            if number is not None and number not in finished:
                finished.add(number)
                completed += 1
        for record in _records(self.errors):
            number = (record.get("error") or {}).get("line")
            if isinstance(number, int) and number not in finished:
                finished.add(number)
                failed += 1
        return finished, completed, failed

    def append(self, record: dict[str, Any], ok: bool) -> None:
        """One result, written by a single append so that a kill leaves it whole or absent."""
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.output if ok else self.errors, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def snapshot_limits(size: int, lines: int, max_bytes: int, max_lines: int) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"input_file_id: the file is over the {max_bytes}-byte limit of a batch "
            "(batches.max_input_bytes)",
            param="input_file_id",
        )
    if lines > max_lines:
        raise PayloadTooLargeError(
            f"input_file_id: the file has more than {max_lines} lines, the limit of a batch "
            "(batches.max_input_lines)",
            param="input_file_id",
        )


def success(line: Line, body: dict[str, Any]) -> dict[str, Any]:
    response = {"status_code": 200, "request_id": secrets.token_hex(16), "body": body}
    return {"id": _id(), "custom_id": line.custom_id, "response": response, "error": None}


def failure(
    line: Line, code: str, message: str, exc: LlamaPostError | None = None
) -> dict[str, Any]:
    """A line's result in the error file, its line number in `error.line`."""
    response = None
    if exc is not None:
        body = {"error": exc.to_body().model_dump(mode="json", exclude={"request_id"})}
        response = {"status_code": exc.status, "request_id": secrets.token_hex(16), "body": body}
    param = exc.param if exc is not None else line.param
    error = {"code": code, "message": message, "param": param, "line": line.number}
    return {"id": _id(), "custom_id": line.custom_id, "response": response, "error": error}


def _id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The whole records of a result file; a line cut off by a crash is dropped from it."""
    if not path.exists():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    for raw in data[:end].splitlines():
        record = json.loads(raw)
        if isinstance(record, dict):
            yield record


def _parse(number: int, raw: bytes, route: Route, seen: dict[str, int]) -> Line:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Line(number, None, problem=f"line {number}: not valid JSON ({exc})")
    if not isinstance(data, dict):
        return Line(number, None, problem=f"line {number}: must be a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _bad(number, None, "custom_id", "a non-empty string is required")
    if custom_id in seen:
        return _bad(number, custom_id, "custom_id", f"{custom_id!r} is line {seen[custom_id]}'s")
    seen[custom_id] = number
    if data.get("method") != "POST":
        return _bad(number, custom_id, "method", "must be POST")
    if data.get("url") != route.path:
        return _bad(number, custom_id, "url", f"must be the batch's endpoint, {route.path}")
    unknown = sorted(set(data) - {"custom_id", "method", "url", "body"})
    if unknown:
        return _bad(number, custom_id, unknown[0], "unexpected field")
    try:
        request = build_request(route, data.get("body"))
    except LlamaPostError as exc:
        param = f"body.{exc.param}" if exc.param and exc.param != "body" else "body"
        return Line(number, custom_id, problem=f"line {number}: {exc.message}", param=param)
    if getattr(request, "stream", False):
        return _bad(number, custom_id, "body.stream", "a batch line cannot stream")
    return Line(number, custom_id, request=request)


def _bad(number: int, custom_id: str | None, param: str, message: str) -> Line:
    return Line(number, custom_id, problem=f"line {number}: {param}: {message}", param=param)
