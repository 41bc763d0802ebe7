"""The OpenAPI 3.1 spec, generated from the route table and the pydantic models it names."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from llama_post.errors import ErrorResponse
from llama_post.routes import Route
from llama_post.version import __version__

REF = "#/components/schemas/{model}"
Refs = dict[tuple[Any, str], dict[str, Any]]  # (model, mode) -> its $ref
COMPAT_NOTE = (
    "Compatibility routes for existing {family} clients, over the same implementation as the "
    "native routes. A state conflict is answered with 400 here, since those SDKs retry a 409."
)
ERRORS = {
    "400": "The request is wrong: the message names the field, row or value.",
    "404": "No such resource.",
    "409": "The id is taken, or the resource's state forbids this.",
    "413": "Over a configured size limit.",
    "422": "The request does not match its schema.",
    "500": "An unexpected server error; the server log has the details.",
}


def build_spec(routes: list[Route]) -> dict[str, Any]:
    refs, schemas = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, refs)
        if links := _links(route, routes):
            operation["responses"]["200"]["links"] = links
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = operation
    compat = {r.compat for r in routes if r.compat}
    tags = [
        {"name": t} | ({"description": COMPAT_NOTE.format(family=t)} if t in compat else {})
        for t in sorted({t for r in routes for t in r.tags})
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llama-post",
            "version": __version__,
            "description": "Self-hosted post-training: files, datasets, fine-tuning and inference.",
        },
        "servers": [{"url": "http://127.0.0.1:8321"}],
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                f"Error{code}": {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}
                    },
                }
                for code, text in ERRORS.items()
            },
        },
    }


def _schemas(
    routes: list[Route],
) -> tuple[Refs, dict[str, Any]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorResponse, "serialization"): None
    }
    for r in routes:
        if r.request_model is not None:
            wanted[(r.request_model, "validation")] = None
        if r.response_model is not None:
            wanted[(r.response_model, "serialization")] = None
        if r.stream_model is not None:
            wanted[(r.stream_model, "serialization")] = None
    mapping, top = models_json_schema(list(wanted), ref_template=REF)
    refs: Refs = {(model, mode): dict(schema) for (model, mode), schema in mapping.items()}
    return refs, dict(sorted(top.get("$defs", {}).items()))


def _operation(route: Route, refs: Refs) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": list(route.tags),
        "summary": route.summary,
    }
    if route.description:
        op["description"] = route.description
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": route.param_schemas[p]}
        for p in route.path_params
    ]
    carried = {p: {"minLength": 1} | route.param_schemas[p] for p in route.carried_params}
    model = route.request_model
    if route.carried_in_query:
        params += [
            {"name": p, "in": "query", "required": True, "schema": carried[p]}
            for p in route.carried_params
        ]
    elif route.carried_params:  # ids in a JSON body, no request model
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": carried,
                        "required": list(route.carried_params),
                        "additionalProperties": False,
                    }
                }
            },
        }
    if model is not None and route.request_kind == "query":
        params += _query_params(model)
    elif model is not None:
        media = "multipart/form-data" if route.request_kind == "multipart" else "application/json"
        op["requestBody"] = {
            "required": True,
            "content": {media: {"schema": refs[(model, "validation")]}},
        }
    if params:
        op["parameters"] = params
    op["responses"] = {"200": _success(route, refs)} | {
        code: {"$ref": f"#/components/responses/Error{code}"} for code in ERRORS
    }
    return op


def _links(route: Route, routes: list[Route]) -> dict[str, Any]:
    """OpenAPI links from a create route to every route of its API that takes an id it
    creates (get, delete, iterrows, cancel, ...) and to its API's lists: how a client, or a
    stateful fuzzer, follows a new resource."""
    if not route.creates:
        return {}
    found: dict[str, Any] = {}
    for target in routes:
        if target is route or target.api != route.api:
            continue
        params: dict[str, str] = {}
        body: dict[str, str] = {}
        for name, pointer in route.creates:
            value = f"$response.body#{pointer}"
            if name in target.path_params:
                params[f"path.{name}"] = value
            elif name in target.carried_params and target.carried_in_query:
                params[f"query.{name}"] = value
            elif name in target.carried_params:
                body[name] = value
        lists = (
            target.method == "GET"
            and target.name.startswith("list")
            and not target.path_params
            and not target.carried_params
        )
        if any(f"path.{p}" not in params for p in target.path_params):
            continue
        if not (params or body or lists):
            continue
        link: dict[str, Any] = {"operationId": target.operation_id}
        if params:
            link["parameters"] = params
        if body:
            link["requestBody"] = body
        found[target.operation_id] = link
    return found


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k != "description"},
        }
        if "description" in prop:
            param["description"] = prop["description"]
        if any(s.get("type") == "object" for s in [prop, *prop.get("anyOf", [])]):
            param |= {"style": "deepObject", "explode": True}  # `metadata[key]=value`
        out.append(param)
    return out


def _success(route: Route, refs: Refs) -> dict[str, Any]:
    if route.response_kind == "binary":
        return {
            "description": "The file's bytes.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    assert route.response_model is not None
    schema = refs[(route.response_model, "serialization")]
    if route.response_kind == "sse":
        return {"description": SSE, "content": {"text/event-stream": {"schema": schema}}}
    content = {"application/json": {"schema": schema}}
    if route.stream_model is not None:
        content["text/event-stream"] = {"schema": refs[(route.stream_model, "serialization")]}
        return {
            "description": f"JSON; with `stream: true`, {SSE[0].lower()}{SSE[1:]}",
            "content": content,
        }
    return {"description": "OK", "content": content}


SSE = "Server-sent events: one `data:` line of this schema each, then `data: [DONE]`."
