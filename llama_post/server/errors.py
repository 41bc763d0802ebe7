"""How the server answers an error: OpenAI's envelope, or LLM Engine's `{"detail": ...}`."""

from __future__ import annotations

from starlette.responses import JSONResponse

from llama_post.errors import LlamaPostError
from llama_post.schema import LLM_ENGINE
from llama_post.server.observe import envelope


def error_response(exc: LlamaPostError, family: str | None = None) -> JSONResponse:
    """The error in OpenAI's envelope; for LLM Engine's routes, as its client reads errors
    (FastAPI's `{"detail": message}`)."""
    body = {"detail": exc.message} if family == LLM_ENGINE else envelope(exc.to_body())
    headers = {}
    if 400 <= exc.status < 500 and exc.status not in (408, 429):
        # the same request would fail again: SDKs that retry 409s (Tinker's, OpenAI's) stop
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=exc.status, headers=headers)
