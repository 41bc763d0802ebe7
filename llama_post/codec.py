"""Turning what a caller sent into a route's request model, the same way for every transport."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from llama_post.errors import InvalidRequestError, RequestValidationError
from llama_post.routes import Route

# Arrays and objects inside one another beyond this are refused before anything walks them:
# validation, storage and encoding all recurse, and no request of ours nests a tenth as deep.
MAX_NESTING = 64
NAMED = 4  # the levels of a too-deep value an error names: enough to find the field


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
    if (where := too_deep(data)) is not None:
        raise InvalidRequestError(
            f"{where or 'body'}: nests deeper than {MAX_NESTING} levels", param=where or "body"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError.from_pydantic(exc.errors()) from None


def too_deep(value: Any, limit: int = MAX_NESTING) -> str | None:
    """Where a container nested deeper than `limit` starts (a dotted path of at most `NAMED`
    keys, `""` for the top), or None.

    Walks with its own stack, so the check itself cannot overflow Python's.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.items()
        elif isinstance(node, list | tuple):
            children = enumerate(node)
        else:
            continue
        if depth > limit:
            return path
        for key, child in children:
            if isinstance(child, dict | list | tuple):
                step = f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
                stack.append((child, path + step if depth <= NAMED else path, depth + 1))
    return None


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
