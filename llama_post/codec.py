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
