"""The server's log output: plain text, or one JSON object a line for log collectors.

`REQUEST_ID` holds the id of the request being served (set by the server's request middleware);
every record logged while serving it carries it. A record's `fields` (`extra={"fields": {...}}`)
become keys of its JSON line, as the server's one line per request does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal

from llama_post.auth import RedactSecrets

LogFormat = Literal["text", "json"]
REQUEST_ID: ContextVar[str | None] = ContextVar("llama_post_request_id", default=None)
# what an incoming X-Request-ID may be: short, and safe to echo in a header and a log line
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
TEXT = "%(levelname)s %(name)s: %(message)s"


def request_id(offered: str | None) -> str:
    """The client's id when it is a safe one, else a new one."""
    if offered is not None and _REQUEST_ID.fullmatch(offered):
        return offered
    return secrets.token_hex(16)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := REQUEST_ID.get()) is not None:
            line["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line |= fields
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(fmt: LogFormat) -> None:
    """Send every log record to stderr in `fmt`, with secrets redacted (`RedactSecrets`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if fmt == "json":
        # every line a JSON object: Python's warnings become records, and Hugging Face's
        # progress bars (loading weights) stay off the output
        logging.captureWarnings(True)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
