"""Turning what a caller sent into a route's request model, the same way for every transport."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from llama_post.errors import RequestValidationError
from llama_post.routes import Route


def build_request(route: Route, data: Any) -> BaseModel:
    """Validate `data` (a dict, or already a request model) against the route's request model."""
    model = route.request_model
    assert model is not None, f"{route.name} takes no request"
    if isinstance(data, model):
        data = data.model_dump(exclude_unset=True, round_trip=True)
    if not isinstance(data, dict):
        raise RequestValidationError(
            f"Invalid request: the body must be a JSON object, not {type(data).__name__}",
            param="body",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError.from_pydantic(exc.errors()) from None


def carried_arguments(route: Route, data: Any) -> dict[str, str]:
    """Take the ids a route reads from the query or body (`?job_uuid=...`) out of `data`."""
    found: dict[str, str] = {}
    for name in route.carried_params:
        value = data.pop(name, None) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise RequestValidationError(
                f"Invalid request: {name}: a non-empty string is required", param=name
            )
        found[name] = value
    if route.request_model is None and isinstance(data, dict) and data:
        extra = sorted(data)[0]
        raise RequestValidationError(
            f"Invalid request: {extra}: unexpected field; this route takes "
            f"{', '.join(route.carried_params)}",
            param=extra,
        )
    return found
