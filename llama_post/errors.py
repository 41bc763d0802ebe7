"""The one error tree of llama-post.

Every error a caller can see is one of these. Each class carries the HTTP status the server
answers with, and also inherits the built-in exception it stands for, so library users can
catch `LookupError` or `ValueError` without importing ours.

    LlamaPostError                      500  base; never raised bare
    ├── InvalidRequestError(ValueError) 400  the request is well-formed but wrong (rows, paths, ids)
    │   └── RequestValidationError      422  the request does not match its schema
    ├── NotFoundError(LookupError)      404  no such file, dataset, route
    ├── ConflictError                   409  the id is taken, the state forbids it
    ├── PayloadTooLargeError            413  upload or row over a configured limit
    ├── AuthenticationError             401  no key, or a key that is not valid
    ├── PermissionDeniedError           403  the key may not do this
    ├── RateLimitError                  429  too many requests; try again later
    ├── NotSupportedError(NotImplementedError)  501  the provider cannot do it
    ├── GenerationError(RuntimeError)   500  one request's decoding could not go on; it ends alone
    ├── UpstreamError(ConnectionError)  502  a remote provider's upstream failed (its 5xx)
    │   ├── UpstreamUnavailableError    503  the upstream cannot be reached
    │   └── UpstreamTimeoutError(TimeoutError)  504  the upstream did not answer in time
    └── ConfigError                     500  run.yaml is wrong; all its errors, at startup

A remote provider answers an upstream's 4xx with the class of the same status and the upstream's
message (`for_status`).

Messages say what to do: which field, which row, which value was expected.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """One located problem: a field of the request, or a field of one row of a dataset."""

    message: str
    field: str | None = None
    row: int | None = None


class ErrorBody(BaseModel):
    """The error object, shaped like OpenAI's so its SDK reads our errors unchanged."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    details: list[ErrorDetail] = []
    request_id: str | None = Field(
        None,
        description="The id of the request this answers (its `x-request-id`), as the server's "
        "log lines name it.",
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


class LlamaPostError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, details: list[ErrorDetail] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or []

    def to_body(self) -> ErrorBody:
        return ErrorBody(
            message=self.message,
            type=self.type,
            param=self.param,
            code=str(self.status),
            details=self.details,
        )


class InvalidRequestError(LlamaPostError, ValueError):
    status = 400
    type = "invalid_request_error"


class RequestValidationError(InvalidRequestError):
    status = 422

    @classmethod
    def from_pydantic(cls, errors: list[Any], prefix: str = "") -> RequestValidationError:
        details = [
            ErrorDetail(field=_join_loc(prefix, _located(e)), message=str(e["msg"])) for e in errors
        ]
        summary = "; ".join(f"{d.field or '(body)'}: {d.message}" for d in details[:5])
        first = details[0].field if details else None
        return cls(f"Invalid request: {summary}", param=first, details=details)


class NotFoundError(LlamaPostError, LookupError):
    status = 404
    type = "not_found_error"


class ConflictError(LlamaPostError):
    status = 409
    type = "conflict_error"


class PayloadTooLargeError(LlamaPostError):
    status = 413
    type = "payload_too_large_error"


class AuthenticationError(LlamaPostError):
    status = 401
    type = "authentication_error"


class PermissionDeniedError(LlamaPostError):
    status = 403
    type = "permission_denied_error"


class RateLimitError(LlamaPostError):
    status = 429
    type = "rate_limit_error"


class GenerationError(LlamaPostError, RuntimeError):
    """One sequence of a batched engine could not go on (its model output was not finite, its
    grammar failed): that request ends with this error, the requests decoded beside it go on."""

    type = "generation_error"


class UpstreamError(LlamaPostError, ConnectionError):
    status = 502
    type = "upstream_error"


class UpstreamUnavailableError(UpstreamError):
    status = 503
    type = "upstream_unavailable_error"


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    status = 504
    type = "upstream_timeout_error"


class NotSupportedError(LlamaPostError, NotImplementedError):
    status = 501
    type = "not_supported_error"


class ConfigError(LlamaPostError):
    """run.yaml is wrong. `details` holds every problem found, each with its YAML path."""

    type = "config_error"

    def __str__(self) -> str:
        lines = [self.message] + [f"  {d.field}: {d.message}" for d in self.details]
        return "\n".join(lines)


def for_status(status: int) -> type[LlamaPostError]:
    """The class a caller gets for an upstream's 4xx status (400 for one the tree lacks)."""
    for cls in (
        RequestValidationError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        RateLimitError,
    ):
        if cls.status == status:
            return cls
    return InvalidRequestError


def _located(error: Any) -> tuple[Any, ...]:
    """Where an error is; a union's unknown or missing tag is its discriminator field's."""
    loc = tuple(error["loc"])
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        return (*loc, str(error.get("ctx", {}).get("discriminator", "")).strip("'"))
    return loc


def _join_loc(prefix: str, loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if item == "[key]":  # pydantic's marker for a bad mapping key: the key itself is named
            continue
        if isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)
