"""The running stack: providers built from run.yaml in dependency order, and their routes."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, JsonValue

from llama_post.apis import BUILTIN_APIS, Api
from llama_post.apis.inspect import (
    HealthInfo,
    ListProvidersResponse,
    ListRoutesResponse,
    ProviderInfo,
    RouteInfo,
    VersionInfo,
)
from llama_post.apis.models import ListModelsResponse, Model, ModelWeights
from llama_post.auth import PRINCIPAL
from llama_post.distribution.batches import BatchService
from llama_post.distribution.checkpoints import Checkpoints
from llama_post.distribution.config import ResolvedProvider, RunConfig, load_run_config
from llama_post.distribution.evaluations import EvaluationService
from llama_post.distribution.fine_tuning import OpenAIFineTuning
from llama_post.distribution.graders import GraderService
from llama_post.distribution.llama_stack_eval import LlamaStackEval
from llama_post.distribution.llm_engine import LLMEngineService
from llama_post.distribution.locations import Locations
from llama_post.distribution.models import InferenceRouter, ModelRegistry
from llama_post.distribution.openai_evals import OpenAIEvals
from llama_post.distribution.owners import Guarded, Owners
from llama_post.distribution.routers import ROUTERS
from llama_post.distribution.spec import Registry, installed_registry
from llama_post.distribution.tinker import TinkerCheckpointsService
from llama_post.distribution.tinker_sessions import TinkerSessions
from llama_post.distribution.training_evaluations import NamedBenchmarks, TrainingWatch
from llama_post.distribution.worker_access import WorkerAccess
from llama_post.errors import ConfigError, ErrorDetail, LlamaPostError, NotFoundError
from llama_post.routes import Route, all_routes, api_version
from llama_post.version import __version__

log = logging.getLogger(__name__)


@dataclass
class ProviderInstance:
    api: Api
    provider_id: str
    provider_type: str
    config: BaseModel
    impl: Any


class Stack:
    def __init__(
        self, run: RunConfig, providers: list[ProviderInstance], impls: dict[Api, Any]
    ) -> None:
        self.run = run
        self.providers = providers
        self.impls = dict(impls)
        self.impls[Api.inspect] = InspectImpl(self)
        self.owners: Owners | None = None
        self.checkpoints: Checkpoints | None = None
        self.batches: BatchService | None = None
        self.evaluations: Joined | None = None
        self.worker_access: WorkerAccess | None = None
        self.routes: list[Route] = [r for r in all_routes() if Api(r.api) in self.impls]

    @classmethod
    async def build(
        cls,
        source: Path | str | dict[str, Any],
        env: dict[str, str] | None = None,
        registry: Registry | None = None,
    ) -> Stack:
        """Validate `source` (a run.yaml path or its parsed content) and start its providers,
        of `registry` (by default the one the installed distribution declares)."""
        registry = installed_registry() if registry is None else registry
        run, resolved = load_run_config(source, env, registry)
        models = ModelRegistry(run.storage_dir, run.imported_models_dir, run.archive_url_prefixes)
        owners = Owners(run.storage_dir)
        worker_access = WorkerAccess(owners)  # the server says where it listens (`serve`)
        locations = Locations(owners, models.imports.folder)
        models.locations = locations
        models.visible = functools.partial(owners.visible, "model")
        routes: dict[Api, list[Route]] = {}
        for route in all_routes():
            routes.setdefault(Api(route.api), []).append(route)

        def guard(api: Api, impl: Any) -> Guarded:
            return Guarded(impl, routes.get(api, []), owners)

        built: list[ProviderInstance] = []
        checkpoints: Checkpoints | None = None
        sessions: Any = None
        batches: BatchService | None = None
        evaluations: Joined | None = None
        post_training: Any = None  # the stack's post-training API, before its guard
        # what providers receive and routes call: checked against the caller's ownership
        impls: dict[Api, Any] = {Api.models: guard(Api.models, models)}
        try:
            for api in _dependency_order(resolved, registry):
                group: dict[str, Any] = {}
                for entry in (r for r in resolved if r.api == api):
                    spec = registry[(api, entry.provider_type)]
                    impl = await _start(spec.factory, entry, {d: impls[d] for d in spec.deps})
                    built.append(
                        ProviderInstance(
                            api, entry.provider_id, entry.provider_type, entry.config, impl
                        )
                    )
                    group[entry.provider_id] = impl
                    use_locations = getattr(impl, "use_locations", None)
                    if use_locations is not None:  # it reads folders a request names
                        use_locations(locations.usable)
                if api == Api.inference:
                    models.providers = group
                    impls[api] = guard(api, InferenceRouter(models))
                    continue
                one = next(iter(group.values())) if len(group) == 1 else ROUTERS[api](group)
                if api == Api.post_training:  # checkpoints and OpenAI's jobs, over any provider
                    one.use_grader_settings(run.graders.settings())
                    one.use_inference_access(worker_access)
                    locations.jobs.append(one)
                    graders = GraderService(
                        run.graders.settings(), impls[Api.models], lambda: impls.get(Api.inference)
                    )
                    fine_tuning = OpenAIFineTuning(guard(api, one), impls[Api.datasets], graders)
                    checkpoints = TinkerCheckpointsService(
                        fine_tuning, one, impls[Api.models], owners, run.storage_dir
                    )
                    checkpoints.start()
                    one = post_training = checkpoints
                if api == Api.training_sessions:  # Tinker's training calls, over any provider
                    if hasattr(one, "session_folders"):  # a local provider's
                        locations.sessions.append(one)
                    sessions = one
                    one = TinkerSessions(one, impls[Api.models], lambda: impls.get(Api.inference))
                impls[api] = guard(api, one)
            if isinstance(checkpoints, TinkerCheckpointsService):  # saved states: Tinker's
                checkpoints.sessions = sessions  # checkpoints too
            models.imports.files = impls.get(Api.files)  # archives uploaded through Files
            await models.restore(run.models)
            for provider in built:  # what a provider does once every model is loaded
                started = getattr(provider.impl, "started", None)
                if started is not None:
                    await started()
            if Api.files in impls and Api.inference in impls:  # batches, over any providers
                batches = BatchService(
                    impls[Api.files], impls[Api.inference], run.storage_dir, run.batches, owners
                )
                impls[Api.batches] = guard(Api.batches, batches)
                batches.start()
            if Api.datasets in impls and Api.inference in impls:  # evaluations, over any
                graders = GraderService(
                    run.graders.settings(), impls[Api.models], lambda: impls.get(Api.inference)
                )
                native = EvaluationService(
                    impls[Api.datasets],
                    impls[Api.models],
                    impls[Api.inference],
                    graders,
                    run.storage_dir,
                    lambda: impls.get(Api.post_training),
                )
                guarded = guard(Api.evaluations, native)
                evaluations = Joined(
                    OpenAIEvals(
                        guarded, impls[Api.datasets], impls.get(Api.files), run.storage_dir
                    ),
                    LlamaStackEval(guarded, graders),
                    guarded,
                )
                impls[Api.evaluations] = guard(Api.evaluations, evaluations)
                if post_training is not None:  # a job's benchmarks read as it is created
                    named = NamedBenchmarks(post_training, guarded)
                    impls[Api.post_training] = guard(Api.post_training, named)
                native.start()
                native.watch_training(
                    TrainingWatch(guarded, lambda: impls.get(Api.post_training), owners, native.db)
                )
            engine = _llm_engine(impls)
        except BaseException:
            if evaluations is not None:
                await evaluations.shutdown()
            if batches is not None:
                await batches.shutdown()
            if checkpoints is not None:
                await checkpoints.shutdown()
            await _shutdown(built)
            await models.shutdown()
            owners.close()
            raise
        if engine is not None:
            impls[Api.llm_engine] = engine
        stack = cls(run, built, impls)
        stack.owners, stack.checkpoints, stack.batches = owners, checkpoints, batches
        stack.evaluations = evaluations
        stack.worker_access = worker_access
        if engine is not None:
            engine.dispatcher = stack  # for the batch service, whichever serves /v1/batches
        return stack

    def call(self, route: Route) -> Any:
        """The bound implementation method a route dispatches to; a model record it answers
        with shows the server's folders only to the model's owner or an admin key."""
        method = getattr(self.impls[Api(route.api)], route.name)
        if route.api == Api.models.value and route.name in ANSWERS_MODELS and self.owners:
            return _hiding_folders(method, self.owners)
        return method

    async def shutdown(self) -> None:
        if self.evaluations is not None:
            await self.evaluations.shutdown()
        if self.batches is not None:
            await self.batches.shutdown()
        if self.checkpoints is not None:
            await self.checkpoints.shutdown()
        await _shutdown(self.providers)
        await self.impls[Api.models].shutdown()
        if self.owners is not None:
            self.owners.close()


class Joined:
    """One API served by several objects (the native service and the foreign families written
    over it): each method is the first part's that has it."""

    def __init__(self, *parts: Any) -> None:
        self._parts = parts

    def __getattr__(self, name: str) -> Any:
        for part in self.__dict__["_parts"]:
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)


def _llm_engine(impls: dict[Api, Any]) -> LLMEngineService | None:
    """LLM Engine's routes, where the stack serves every API they translate to."""
    needed = (Api.inference, Api.files, Api.datasets, Api.post_training, Api.models)
    if not all(api in impls for api in needed):
        return None
    return LLMEngineService({api.value: impls[api] for api in needed})


async def _start(factory: Any, entry: ResolvedProvider, deps: dict[Api, Any]) -> Any:
    try:
        return await factory(entry.config, deps, entry.provider_id)
    except LlamaPostError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"provider {entry.provider_id!r} ({entry.provider_type}) for {entry.api} "
            f"failed to start: {type(exc).__name__}: {exc}"
        ) from exc


async def _shutdown(providers: list[ProviderInstance]) -> None:
    for p in reversed(providers):
        close = getattr(p.impl, "shutdown", None)
        if close is None:
            continue
        try:
            await close()
        except Exception:
            log.exception("provider %s failed to shut down", p.provider_id)


def _dependency_order(resolved: list[ResolvedProvider], registry: Registry) -> list[Api]:
    needs: dict[Api, set[Api]] = {}
    for r in resolved:
        deps = set(registry[(r.api, r.provider_type)].deps) - BUILTIN_APIS
        needs.setdefault(r.api, set()).update(deps)
    order: list[Api] = []
    while len(order) < len(needs):
        ready = [a for a in needs if a not in order and needs[a] <= set(order)]
        if not ready:
            stuck = sorted(a.value for a in needs if a not in order)
            raise ConfigError(
                "providers depend on each other in a cycle",
                details=[
                    ErrorDetail(field=f"providers.{a}", message="in the cycle") for a in stuck
                ],
            )
        order += ready
    return order


class InspectImpl:
    """The Inspect API, served by the stack itself."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    async def health(self) -> HealthInfo:
        reports = []
        for p in self.stack.providers:
            check = getattr(p.impl, "health", None)
            if check is not None:
                report = await check()
                reports.append(report.model_copy(update={"provider_id": p.provider_id}))
        ok = all(r.status == "OK" for r in reports)
        return HealthInfo(status="OK" if ok else "Degraded", providers=reports)

    async def version(self) -> VersionInfo:
        return VersionInfo(version=__version__, api_version=api_version())

    async def list_routes(self) -> ListRoutesResponse:
        types: dict[str, list[str]] = {}
        for p in self.stack.providers:
            types.setdefault(p.api.value, []).append(p.provider_type)
        return ListRoutesResponse(
            data=[
                RouteInfo(
                    route=r.openapi_path,
                    method=r.method,
                    api=r.api,
                    name=r.name,
                    streaming=r.response_kind == "sse",
                    provider_types=types.get(r.api, []),
                )
                for r in self.stack.routes
            ]
        )

    async def list_providers(self) -> ListProvidersResponse:
        """Every provider and its config; the server's folders in it only for an admin key (or
        an in-process call), as another owner's things lie in them."""
        infos = await asyncio.gather(*(self._info(p) for p in self.stack.providers))
        return ListProvidersResponse(data=list(infos))

    async def inspect_provider(self, provider_id: str) -> ProviderInfo:
        for p in self.stack.providers:
            if p.provider_id == provider_id:
                return await self._info(p)
        raise NotFoundError(f"no provider with id {provider_id!r}", param="provider_id")

    async def _info(self, p: ProviderInstance) -> ProviderInfo:
        principal = PRINCIPAL.get()
        shown = principal is None or principal.admin
        config = p.config.model_dump(mode="json")
        return ProviderInfo(
            api=p.api.value,
            provider_id=p.provider_id,
            provider_type=p.provider_type,
            config=config if shown else _without_folders(config, p.config.model_dump()),
            health=await _health(p),
        )


async def _health(p: ProviderInstance) -> dict[str, JsonValue]:
    """Llama Stack's health of one provider: what its check says, within 5 s."""
    check = getattr(p.impl, "health", None)
    if check is None:
        return {"status": "Not Implemented", "message": "Provider does not implement health check"}
    try:
        report = await asyncio.wait_for(check(), timeout=5)
    except TimeoutError:
        return {"status": "Error", "message": "the health check did not answer within 5 s"}
    if report.status == "OK":
        return {"status": "OK"}
    return {"status": "Error", "message": report.message}


HIDDEN = "(hidden)"


def _without_folders(shown: Any, values: Any) -> Any:
    """`shown` (a config as JSON) with every folder hidden: a value that was a `Path` (its
    `values`, the same config as Python objects), or a string naming an absolute path."""
    if isinstance(values, Path) or (isinstance(shown, str) and shown.startswith(("/", "~"))):
        return HIDDEN
    if isinstance(shown, dict) and isinstance(values, dict):
        return {k: _without_folders(v, values.get(k)) for k, v in shown.items()}
    if isinstance(shown, list) and isinstance(values, list | tuple | set | frozenset):
        return [_without_folders(v, w) for v, w in zip(shown, values, strict=False)]
    return shown


# the Models routes whose answer holds model records
ANSWERS_MODELS = {"get_model", "list_models", "register_model", "load_lora_adapter"}


def _hiding_folders(method: Any, owners: Owners) -> Any:
    """`method`, its model records read by a caller that did not make the model (a published
    one, run.yaml's) with the server's folders (`source.path`, `weights`) hidden, as
    `/v1/inspect/providers` hides them. Providers and jobs, which call the registry itself, read
    them whole."""

    def shown(model: Model, made: bool) -> Model:
        if made:
            return model
        update: dict[str, Any] = {}
        if getattr(model.source, "path", None) is not None:
            update["source"] = model.source.model_copy(update={"path": HIDDEN})
        if model.weights is not None:
            hidden = HIDDEN if model.weights.adapter_path is not None else None
            update["weights"] = ModelWeights(path=HIDDEN, adapter_path=hidden)
        return model.model_copy(update=update) if update else model

    @functools.wraps(method)
    async def hiding(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        if isinstance(result, Model):
            return shown(result, owners.made_by_caller("model", result.id))
        if isinstance(result, ListModelsResponse):
            made = owners.made_by_caller_of("model", [m.id for m in result.data])
            return result.model_copy(update={"data": [shown(m, m.id in made) for m in result.data]})
        return result

    return hiding
