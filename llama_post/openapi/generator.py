"""The OpenAPI 3.1 spec, generated from the route table and the pydantic models it names.

Each operation lists the errors it can answer, read from its route: 401 and 403 (and the keys it
takes, `security`) on every route that needs a key when auth is on (`llama_post.auth.needs_key`:
all but health, version and the signed checkpoint URLs); 404 where it names something (an id in
its path or query, or a request that may name one: a model, a dataset, a file, a cursor); 409
where it creates a thing its request names (a dataset, a model, a job) or changes one by id (a
compatibility route other than Tinker's answers a state conflict with 400); 413 where it takes a
body; 400, 422 and 500 everywhere. LLM Engine's routes answer `{"detail": message}`, which its
client reads, except for a refused key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from llama_post.auth import needs_key
from llama_post.errors import ErrorResponse
from llama_post.routes import Route
from llama_post.schema import LLM_ENGINE, TINKER
from llama_post.version import __version__

REF = "#/components/schemas/{model}"
Refs = dict[tuple[Any, str], dict[str, Any]]  # (model, mode) -> its $ref
COMPAT_NOTE = (
    "Compatibility routes for existing {family} clients, over the same implementation as the "
    "native routes. A state conflict is answered with 400 here, since those SDKs retry a 409."
)
ERRORS = {
    "400": "The request is wrong: the message names the field, row or value.",
    "401": "No API key, or one that is not valid (auth is on): send `Authorization: Bearer "
    "<key>` or `X-API-Key: <key>`.",
    "403": "The key may not do this: what another owner published is changed only by its owner.",
    "404": "No such resource: an id names nothing this key may see.",
    "409": "The id is taken, or the resource's state forbids this.",
    "413": "Over a size limit: a JSON body over 64 MiB, an upload over the provider's "
    "`max_upload_bytes`.",
    "422": "The request does not match its schema.",
    "500": "An unexpected server error; the server log has the details.",
}
# the request fields a create's new id may be named by (a file's, a batch's are the server's)
NAMED_BY = {"model_id": ("model_id", "lora_name")}
# how a request presents its key (`llama_post.auth.presented_key`); any one of them will do
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "The key as the user name, no password (as LLM Engine's client sends it).",
    },
}
DETAIL_ERROR = {  # LLM Engine's error body
    "type": "object",
    "title": "DetailError",
    "properties": {"detail": {"type": "string", "title": "Detail"}},
    "required": ["detail"],
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
            "schemas": schemas | {"DetailError": DETAIL_ERROR},
            "responses": {
                f"{prefix}Error{code}": _error_response(code, text, model)
                for prefix, model in (("", "ErrorResponse"), ("Detail", "DetailError"))
                for code, text in ERRORS.items()
                if not (prefix and code == "401")  # a refused key is the envelope everywhere
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _error_response(code: str, text: str, model: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }
    if code == "401":
        response["headers"] = {
            "WWW-Authenticate": {
                "description": '`Bearer realm="llama-post"`',
                "schema": {"type": "string"},
            }
        }
    return response


def _errors(route: Route) -> dict[str, Any]:
    """The error responses `route` can answer (see the module's docstring)."""
    keyed = needs_key(route.path)
    names = bool(route.path_params or route.carried_params) or (
        route.request_model is not None and route.request_kind != "multipart"
    )
    fields = set(route.request_model.model_fields) if route.request_model is not None else set()
    named = any(fields & set(NAMED_BY.get(param, (param,))) for param, _ in route.creates)
    changes = route.method != "GET" and bool(route.path_params or route.carried_params)
    conflicts = named or (changes and route.compat in (None, TINKER))
    codes = {
        "400": True,
        "401": keyed,
        "403": keyed,
        "404": names,
        "409": conflicts,
        "413": route.request_kind in ("json", "multipart"),
        "422": True,
        "500": True,
    }
    detail = "Detail" if route.compat == LLM_ENGINE else ""
    return {
        code: {"$ref": f"#/components/responses/{'' if code == '401' else detail}Error{code}"}
        for code, used in codes.items()
        if used
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
    if needs_key(route.path):
        op["security"] = [{name: []} for name in SECURITY_SCHEMES]
    op["responses"] = {"200": _success(route, refs)} | _errors(route)
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
