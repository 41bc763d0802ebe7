"""Who owns what: files, datasets, jobs, batches and models belong to the owner whose key made
them.

`Guarded` wraps an API's implementation and reads what to guard from the route table: a create
(`@creates`) records its new ids as the caller's; a method taking an id (`file_id`, `dataset_id`,
`model_id`, `job_uuid`, `fine_tuning_job_id`, `lora_name`, in the path, the query or the body)
answers 404 for another owner's, as for an id that does not exist; a list leaves them out. A
method that changes what an id names (`CHANGES`: unregistering a model, unloading an adapter,
loading one in place of another) needs the caller to own it: a published model is everyone's to
read and use, and its owner's alone to change (403). The stack installs the guarded
implementations as the ones providers receive too, so a reference made inside a request (a job's
model and dataset, a dataset's file) is checked the same way. A thing no owner created (run.yaml's
models, what an upstream serves, anything made while auth was off) is everyone's. An admin key,
and an in-process call (no key), see everything. Paths a request names are checked by where they
lie (`locations.py`).

A paged list (`PAGED`) is cut from what the caller sees, so its pages are full and its cursors
name only the caller's things; another owner's id as a cursor is answered as one that names
nothing. Ids are one namespace for all owners: a taken one is the same 409 for everyone.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llama_post.auth import PRINCIPAL
from llama_post.errors import NotFoundError, PermissionDeniedError
from llama_post.routes import Route
from llama_post.storage import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS owned (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS published (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
"""
KINDS = {
    "file_id": "file",
    "dataset_id": "dataset",
    "model_id": "model",
    "lora_name": "model",
    "job_uuid": "job",
    "fine_tuning_job_id": "job",
    "training_run_id": "job",
    "batch_id": "batch",
    "export_id": "export",
    "benchmark_id": "benchmark",
    "evaluation_id": "evaluation",
    "eval_id": "eval",
    "run_id": "eval_run",
    "job_id": "evaluation",  # Llama Stack's name for an evaluation job
    # a training session, and what lives in it: `<session>:train:<n>`, its saved states
    # (`<session>:train:<n>/state/<name>`), its samplers and futures: owned as the session
    "session_id": "session",
    "training_model_id": "session",
    "sampler_id": "session",
}
# how a route says that an id names nothing, where not as "no <kind> 'id'"
MISSING = {
    "fine_tuning_job_id": "no fine-tuning job {id!r}",
    "file_id": "file {id!r} not found",  # Llama Stack's own tests read "not found"
}
# ids a request body names, by method: (kind, how to read it)
BODY: dict[str, list[tuple[str, Callable[[Any], str | None]]]] = {
    name: [("model", lambda r: r.model)]
    for name in ("chat_completion", "completion", "batch_chat_completion", "batch_completion")
}
BODY["register_model"] = [("model", lambda r: getattr(r.source, "base_model", None))]
for name in ("merge_adapter", "export_model"):  # what a merge or export reads
    BODY[name] = [("model", lambda r: r.model), ("checkpoint", lambda r: r.checkpoint)]
BODY["load_lora_adapter"] = [("model", lambda r: r.base_model)]
BODY["register_benchmark"] = [("dataset", lambda r: r.dataset_id)]
BODY["create_evaluation"] = [("benchmark", lambda r: r.benchmark_id), ("model", lambda r: r.model)]
BODY["unload_lora_adapter"] = [("model", lambda r: r.lora_name)]
BODY["create_training_model"] = [("session", lambda r: r.from_state)]
BODY["load_state"] = [("session", lambda r: r.from_state)]
for _name in ("tinker_session_heartbeat", "tinker_create_model", "tinker_create_sampling_session"):
    BODY[_name] = [("session", lambda r: r.session_id)]
for _name in (
    "tinker_get_info",
    "tinker_forward_backward",
    "tinker_optim_step",
    "tinker_save_weights",
    "tinker_save_weights_for_sampler",
):
    BODY[_name] = [("session", lambda r: r.model_id)]
BODY["tinker_load_weights"] = [
    ("session", lambda r: r.session_id),
    ("session", lambda r: r.model_id),
    ("session", lambda r: tinker_run(r.path)),
]
BODY["tinker_create_sampling_session"].append(("session", lambda r: tinker_run(r.model_path)))
BODY["tinker_retrieve_future"] = [("session", lambda r: r.request_id)]
BODY["tinker_sample"] = [("session", lambda r: r.sampling_session_id)]
# the request field a body's id of each kind is read from (else `model`)
FIELDS = {"checkpoint": "checkpoint", "dataset": "dataset_id", "benchmark": "benchmark_id"}
# methods that change the model an id names, by the parameter or body field naming it; a published
# model is readable by every key, and changed by its owner alone
CHANGES: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "unregister_model": ("model_id", lambda bound: bound.get("model_id")),
    "unload_lora_adapter": ("lora_name", lambda bound: bound["request"].lora_name),
    # a load in place replaces the adapter of that name, if there is one
    "load_lora_adapter": (
        "lora_name",
        lambda bound: bound["request"].lora_name if bound["request"].load_inplace else None,
    ),
}
# lists: (the field holding the items, the item's id attribute, the kind)
LISTS = {
    "list_files": ("data", "id", "file"),
    "list_datasets": ("data", "identifier", "dataset"),
    "list_models": ("data", "id", "model"),
    "list_jobs": ("data", "job_uuid", "job"),
    "list_sessions": ("data", "session_id", "session"),
    "list_states": ("data", "training_model_id", "session"),
    "list_exports": ("data", "export_id", "export"),
    "list_benchmarks": ("data", "benchmark_id", "benchmark"),
    "list_evaluations": ("data", "evaluation_id", "evaluation"),
    "list_evals": ("data", "id", "eval"),
    "list_eval_benchmarks": ("data", "identifier", "benchmark"),
}
# lists a caller pages through (`after`, `limit`; `has_more`, `first_id`, `last_id`): their pages
# are cut from what the caller may see, never filtered after the implementation has cut them
PAGED = {"list_files", "list_evals"}


def tinker_run(path: str | None) -> str | None:
    """The run (a training model) of a Tinker path, `tinker://<run>/<kind>/<name>`."""
    if path is None or not path.startswith("tinker://"):
        return None
    return path.removeprefix("tinker://").split("/", 1)[0]


class Owners:
    def __init__(self, storage_dir: Path) -> None:
        self.db = Database(storage_dir / "owners.db", SCHEMA)

    def record(self, kind: str, id: str) -> None:
        principal = PRINCIPAL.get()
        if principal is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO owned (kind, id, owner) VALUES (?, ?, ?)",
                (kind, id, principal.owner),
            )

    def owns(self, kind: str, id: str) -> bool:
        """The caller may change it: theirs, no one's, or the caller is an admin."""
        principal = PRINCIPAL.get()
        if principal is None or principal.admin:
            return True
        if kind == "checkpoint":
            return self.owns("job", id.split("/", 1)[0])
        if kind == "session":  # a session's models, states, samplers and futures are its own
            id = id.split("/", 1)[0].split(":", 1)[0]
        owner = self.owner_of(kind, id)
        return owner is None or owner == principal.owner

    def made_by_caller(self, kind: str, id: str) -> bool:
        """The caller made it (or is an admin, or an in-process call): not merely allowed to
        use it as no one's or a published thing."""
        principal = PRINCIPAL.get()
        if principal is None or principal.admin:
            return True
        return self.owner_of(kind, id) == principal.owner

    def made_by_caller_of(self, kind: str, ids: list[str]) -> set[str]:
        """Those of `ids` the caller made (all, for an admin or an in-process call): one query."""
        principal = PRINCIPAL.get()
        if principal is None or principal.admin:
            return set(ids)
        rows = self.db.all(
            "SELECT id FROM owned WHERE kind = ? AND owner = ?", (kind, principal.owner)
        )
        return {str(row["id"]) for row in rows} & set(ids)

    def visible(self, kind: str, id: str) -> bool:
        """The caller may read it: it may change it, or it is published."""
        return self.owns(kind, id) or self.is_public(kind, id)

    def owner_of(self, kind: str, id: str) -> str | None:
        row = self.db.one("SELECT owner FROM owned WHERE kind = ? AND id = ?", (kind, id))
        return str(row["owner"]) if row else None

    def any_public(self, kind: str, prefix: str) -> bool:
        """Whether something of `kind` whose id starts with `prefix` is published."""
        found = self.db.one(
            "SELECT 1 FROM published WHERE kind = ? AND substr(id, 1, ?) = ?",
            (kind, len(prefix), prefix),
        )
        return found is not None

    def is_public(self, kind: str, id: str) -> bool:
        found = self.db.one("SELECT 1 FROM published WHERE kind = ? AND id = ?", (kind, id))
        return found is not None

    def publish(self, kind: str, id: str, public: bool = True) -> None:
        if public:
            self.db.execute("INSERT OR IGNORE INTO published (kind, id) VALUES (?, ?)", (kind, id))
        else:
            self.db.execute("DELETE FROM published WHERE kind = ? AND id = ?", (kind, id))

    def check(self, kind: str, id: str | None, param: str) -> None:
        """A 404 for an id the caller may not read, in the words the route uses for an id that
        names nothing, so that the answer does not tell whether the id is taken."""
        if id is not None and not self.visible(kind, id):
            missing = MISSING.get(param, "no {kind} {id!r}")
            raise NotFoundError(missing.format(kind=kind, id=id), param=param)

    def check_change(self, kind: str, id: str | None, param: str) -> None:
        """The caller may change it: 404 where it may not even read it, 403 where it may read
        it (published) but not change it."""
        self.check(kind, id, param)
        if id is not None and not self.owns(kind, id):
            raise PermissionDeniedError(
                f"{kind} {id!r} is published, but only its owner may change it", param=param
            )

    def others(self, kind: str) -> list[str]:
        """The ids of `kind` that another owner than the caller made (none for an admin, or
        an in-process call)."""
        principal = PRINCIPAL.get()
        if principal is None or principal.admin:
            return []
        rows = self.db.all(
            "SELECT id FROM owned WHERE kind = ? AND owner != ?", (kind, principal.owner)
        )
        return [str(r["id"]) for r in rows]

    def sees_everything(self) -> bool:
        """No owner's things are hidden from the caller: an admin, or an in-process call."""
        principal = PRINCIPAL.get()
        return principal is None or principal.admin

    def close(self) -> None:
        self.db.close()


class Guarded:
    """`impl` with its routes' methods checked against the caller; anything else passes."""

    def __init__(self, impl: Any, routes: list[Route], owners: Owners) -> None:
        self._impl = impl
        self._owners = owners
        self._methods: dict[str, Callable[..., Any]] = {}
        by_name: dict[str, list[Route]] = {}
        for route in routes:
            by_name.setdefault(route.name, []).append(route)
        for name, named in by_name.items():
            if hasattr(impl, name):
                self._methods[name] = self._guard(name, named, getattr(impl, name))

    def __getattr__(self, name: str) -> Any:
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return methods[name]
        return getattr(self._impl, name)

    def _guard(self, name: str, routes: list[Route], method: Callable[..., Any]) -> Any:
        owners = self._owners
        signature = inspect.signature(method)
        named = dict.fromkeys(p for r in routes for p in (*r.path_params, *r.carried_params))
        ids = [(param, KINDS[param]) for param in named if param in KINDS]
        # a job's checkpoint is read by its job's owner, or by anyone once published
        checkpoint_param = next(
            (p for p in ("checkpoint_id", "checkpoint_name") if p in named), None
        )
        checkpoint = checkpoint_param is not None
        job_param = next((p for p in named if KINDS.get(p) == "job"), None)
        if checkpoint:
            ids = [(param, kind) for param, kind in ids if kind != "job"]
        creates = {param: pointer for r in routes for param, pointer in r.creates}
        body = BODY.get(name, [])
        listing = LISTS.get(name)
        change = CHANGES.get(name)
        paged = listing if name in PAGED else None

        @functools.wraps(method)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            for param, kind in ids:
                owners.check(kind, bound.get(param), param)
            if checkpoint and job_param is not None:
                job, name = bound.get(job_param), bound.get(str(checkpoint_param))
                owners.check("checkpoint", f"{job}/{name}", str(checkpoint_param))
            request = bound.get("request")
            if request is not None:
                for kind, read in body:
                    field = FIELDS.get(kind, "model")
                    owners.check(kind, read(request), field)
            if change is not None:
                param, changed = change
                owners.check_change("model", changed(bound), param)
            if paged is not None:
                return await _visible_page(method, request, paged, owners)
            result = await method(*args, **kwargs)
            for param, pointer in creates.items():
                created = _pointer(result, pointer)
                if created is not None:
                    owners.record(KINDS[param], created)
                    if KINDS[param] == "job":  # the model its final checkpoint is served as
                        owners.record("model", f"ft/{created}")
                    if KINDS[param] == "export" and getattr(result, "model_id", None):
                        owners.record("model", result.model_id)  # the model a merge registers
            if listing is not None:
                field, attr, kind = listing
                items = [
                    i for i in getattr(result, field) if owners.visible(kind, getattr(i, attr))
                ]
                result = result.model_copy(update={field: items})
            return result

        return guarded


async def _visible_page(
    method: Callable[..., Any], request: Any, listing: tuple[str, str, str], owners: Owners
) -> Any:
    """The page of a paged list the caller sees: `request.limit` of the items it may see after
    `request.after` (an id it may see, else a 404 as for none), read from the implementation's
    pages until there are more than that or no more; its cursors are of those items."""
    field, attr, kind = listing
    if owners.sees_everything():
        return await method(request)
    if request.after is not None and not owners.visible(kind, request.after):
        raise NotFoundError(f"after: no {kind} {request.after!r}", param="after")  # as for none
    seen: list[Any] = []
    asked = request
    while True:
        result = await method(asked)
        items = getattr(result, field)
        seen += [i for i in items if owners.visible(kind, getattr(i, attr))]
        if len(seen) > request.limit or not result.has_more or not items:
            break
        asked = request.model_copy(update={"after": getattr(items[-1], attr)})
    page = seen[: request.limit]
    return result.model_copy(
        update={
            field: page,
            "has_more": len(seen) > len(page),
            "first_id": getattr(page[0], attr) if page else None,
            "last_id": getattr(page[-1], attr) if page else None,
        }
    )


def _pointer(result: Any, pointer: str) -> str | None:
    node: Any = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    for part in pointer.strip("/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, str) else None
