"""The model registry: the Models API, served by the stack, and the router of inference calls.

Models live in the stack's SQLite file, so models registered through the API (and checkpoints
that post-training registers) are loaded again when the server restarts. Each model belongs to one
inference provider; a call names a model and goes to that provider.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter

from llama_post.apis.inference import (
    BatchChatCompletionRequest,
    BatchChatCompletionResponse,
    BatchCompletionRequest,
    BatchCompletionResponse,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    InferenceProvider,
    SamplingFields,
)
from llama_post.apis.models import (
    AdapterSource,
    ArchiveSource,
    DeleteModelResponse,
    GGUFSource,
    ListModelsResponse,
    LoadLoraAdapterRequest,
    Model,
    ModelSource,
    RegisterModelRequest,
    UnloadLoraAdapterRequest,
)
from llama_post.distribution.imports import ArchiveImports
from llama_post.distribution.locations import Locations
from llama_post.errors import (
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    UpstreamError,
)
from llama_post.storage import Database

log = logging.getLogger(__name__)
R = TypeVar("R", bound=SamplingFields)
RETRY_LOAD_SECONDS = 10.0
SOURCE: TypeAdapter[ModelSource] = TypeAdapter(ModelSource)
SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    record TEXT NOT NULL
);
"""


class ModelRegistry:
    def __init__(
        self,
        storage_dir: Path,
        imports_dir: Path | None = None,
        archive_url_prefixes: list[str] | None = None,
    ) -> None:
        self.db = Database(storage_dir / "registry.db", SCHEMA)
        self.imports = ArchiveImports(
            imports_dir or storage_dir / "checkpoints" / "imported", archive_url_prefixes or []
        )
        self.providers: dict[str, InferenceProvider] = {}
        self.locations: Locations | None = None  # set by the stack, with owners
        self.loaded: set[str] = set()
        self.failed: dict[str, tuple[float, LlamaPostError]] = {}  # id -> last failed load
        # whether the caller may see a model (set by the stack: the owners' rule); a message
        # names no model the caller may not see
        self.visible: Callable[[str], bool] = lambda model_id: True

    async def restore(self, declared: list[RegisterModelRequest]) -> None:
        """Register run.yaml's models if new, then load every stored model, bases first."""
        stored = {m.id: m for m in self._all()}
        for request in declared:
            old = stored.get(request.model_id)
            if (
                old is None
                or old.source != request.source
                or old.sampling_defaults != request.sampling_defaults
                or old.provider_id != (request.provider_id or old.provider_id)
            ):
                if old is not None:
                    self.db.execute("DELETE FROM models WHERE id = ?", (old.id,))
                try:
                    await self.register_model(request, defer=True)
                except ConflictError:  # a server starting beside us on this home was first
                    log.info("model %s was registered by another server", request.model_id)
        await self._discover()
        for model in sorted(self._all(), key=lambda m: m.kind != "base"):
            if model.id in self.loaded:
                continue
            if model.id in self.failed:
                continue  # tried a moment ago: its upstream is down
            try:
                await self._load(model)
            except LlamaPostError as exc:
                self.failed[model.id] = (time.monotonic(), exc)
                log.error("model %s could not be loaded and is not served: %s", model.id, exc)

    async def _discover(self) -> None:
        """Register the models each provider's upstream already serves (remote providers)."""
        for provider_id, provider in self.providers.items():
            for request in await provider.discover():  # most providers discover nothing
                if self._exists(request.model_id):
                    continue
                request = request.model_copy(update={"provider_id": provider_id})
                try:
                    await self.register_model(request)
                except LlamaPostError as exc:
                    log.error(
                        "provider %s serves %s, not registered: %s",
                        provider_id,
                        request.model_id,
                        exc,
                    )

    # -- the Models API ------------------------------------------------------------------------

    async def list_models(self) -> ListModelsResponse:
        await self._discover()  # an upstream that was down at start may answer now
        return ListModelsResponse(data=self._all())

    async def get_model(self, model_id: str) -> Model:
        return self._record(model_id, "model_id")

    def _record(self, model_id: str, param: str = "model") -> Model:
        """The model's record; a 404 naming `param` (the field of the request that named it,
        as the route's owner check names it) where there is none."""
        row = self.db.one("SELECT record FROM models WHERE id = ?", (model_id,))
        if row is None:
            raise NotFoundError(f"no model {model_id!r}", param=param)
        return Model.model_validate_json(row["record"])

    async def register_model(
        self, request: RegisterModelRequest, defer: bool = False, unpacked: bool = False
    ) -> Model:
        """Load the model with its provider, then store it. With `defer` (run.yaml's models), a
        model whose upstream cannot be reached now is stored unloaded, and loaded when asked for
        once the upstream answers. `unpacked`: its folder is one this registry has just unpacked
        for the caller, so no other owner's."""
        if self._exists(request.model_id):
            raise ConflictError(f"model {request.model_id!r} already exists", param="model_id")
        if isinstance(request.source, ArchiveSource):
            return await self._register_archive(request, request.source)
        base = None
        if isinstance(request.source, AdapterSource):  # served where its base is
            base = await self._base_of(request.source, request.provider_id)
            provider_id = base.provider_id
        else:
            provider_id = self._provider_id(request.provider_id)
        await self._check_source(provider_id, request.source, unpacked)
        model = Model(
            id=request.model_id,
            created=int(time.time()),
            provider_id=provider_id,
            kind="adapter" if base else "base",
            base_model=base.id if base else None,
            context_length=0,
            has_chat_template=False,
            source=request.source,
            sampling_defaults=request.sampling_defaults,
            metadata=request.metadata,
        )
        try:
            model = await self._load(model)
        except UpstreamError as exc:
            if not defer:
                raise
            log.error("model %s is not served until its upstream answers: %s", model.id, exc)
            self.failed[model.id] = (time.monotonic(), exc)
        try:
            self.db.execute(
                "INSERT INTO models (id, record) VALUES (?, ?)",
                (model.id, model.model_dump_json()),
            )
        except sqlite3.IntegrityError:  # registered meanwhile, by another request or server
            await self.providers[provider_id].unload_model(model.id)
            self.loaded.discard(model.id)
            raise ConflictError(
                f"model {request.model_id!r} already exists", param="model_id"
            ) from None
        return model

    async def unregister_model(self, model_id: str) -> DeleteModelResponse:
        model = self._record(model_id, "model_id")
        adapters = [m.id for m in self._all() if m.base_model == model_id]
        if adapters:
            yours = [a for a in adapters if self.visible(a)]
            others = "adapters of other owners" if len(yours) < len(adapters) else ""
            named = " and ".join(filter(None, (", ".join(yours), others)))
            raise ConflictError(
                f"model {model_id!r} is the base of {named}; it stays while they are registered"
            )
        if model_id in self.loaded:
            await self.providers[model.provider_id].unload_model(model_id)
            self.loaded.discard(model_id)
        self.db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        path = getattr(model.source, "path", None)
        if path is not None and self.imports.owns(path):  # unpacked from an archive: ours
            await self.imports.remove(Path(path))
        return DeleteModelResponse(id=model_id, deleted=True)

    async def shutdown(self) -> None:
        self.db.close()

    # -- helpers -------------------------------------------------------------------------------

    async def load_lora_adapter(self, request: LoadLoraAdapterRequest) -> Model:
        try:
            return await self._load_lora_adapter(request)
        except LlamaPostError as exc:  # vLLM's route names the path `lora_path`
            if exc.param != "source.path":
                raise
            message = exc.message.replace("source.path", "lora_path", 1)
            raise type(exc)(message, param="lora_path", details=exc.details) from None

    async def _load_lora_adapter(self, request: LoadLoraAdapterRequest) -> Model:
        base = request.base_model
        if base is None:
            # among the bases the caller may use: another owner's are neither named nor counted
            bases = [m.id for m in self._all() if m.kind == "base" and self.visible(m.id)]
            if not bases:
                raise NotFoundError(
                    "base_model: no base model is served to load the adapter over",
                    param="base_model",
                )
            if len(bases) != 1:
                raise InvalidRequestError(
                    f"base_model: {len(bases)} base models are served "
                    f"({', '.join(bases) or 'none'}); name the adapter's base",
                    param="base_model",
                )
            base = bases[0]
        source = AdapterSource(type="adapter", path=request.lora_path, base_model=base)
        if request.load_inplace and self._exists(request.lora_name):
            old = await self.get_model(request.lora_name)
            if old.kind != "adapter":
                raise ConflictError(
                    f"lora_name: {old.id!r} is a base model; it is not replaced by an adapter",
                    param="lora_name",
                )
            await self._check_source(old.provider_id, source)  # before the old goes
            await self.unregister_model(request.lora_name)
        return await self.register_model(
            RegisterModelRequest(model_id=request.lora_name, source=source)
        )

    async def unload_lora_adapter(self, request: UnloadLoraAdapterRequest) -> DeleteModelResponse:
        model = self._record(request.lora_name)  # named "model", as the owner check names it
        if model.kind != "adapter":
            raise InvalidRequestError(
                f"lora_name: {model.id!r} is a base model, not an adapter", param="lora_name"
            )
        return await self.unregister_model(model.id)

    async def served(self, model_id: str) -> tuple[InferenceProvider, Model]:
        """The provider serving a loaded model, and the model's record (one read). A model
        whose load failed (its upstream was down, say) is tried again, at most every
        RETRY_LOAD_SECONDS."""
        model = self._record(model_id)
        if model_id not in self.loaded:
            when, error = self.failed.get(model_id, (0.0, None))
            if error is not None and time.monotonic() - when < RETRY_LOAD_SECONDS:
                if isinstance(error, UpstreamError):
                    raise error
                raise NotFoundError(
                    f"model {model_id!r} is registered but could not be loaded: {error.message}",
                    param="model",
                )
            try:
                model = await self._load(model)
            except LlamaPostError as exc:
                self.failed[model_id] = (time.monotonic(), exc)
                raise
            self.failed.pop(model_id, None)
        return self.providers[model.provider_id], model

    async def _register_archive(
        self, request: RegisterModelRequest, source: ArchiveSource
    ) -> Model:
        """Unpack the archive into the imported models folder and register what it holds; a
        refused archive or a model that does not load leaves nothing behind."""
        base = None
        if source.base_model is not None:
            base = await self._base_of(
                AdapterSource(type="adapter", path="-", base_model=source.base_model),
                request.provider_id,
            )
        unpacked = await self.imports.unpack(request.model_id, source, base)
        origin = {"file_id": source.file_id} if source.file_id else {"url": source.url}
        registration = request.model_copy(
            update={"source": unpacked, "metadata": {**request.metadata, "archive": origin}}
        )
        try:
            return await self.register_model(registration, unpacked=True)
        except BaseException:
            await self.imports.remove(Path(unpacked.path))
            raise

    async def _load(self, model: Model) -> Model:
        provider = self.providers.get(model.provider_id)
        if provider is None:
            raise InvalidRequestError(f"provider_id: no inference provider {model.provider_id!r}")
        base = await self.get_model(model.base_model) if model.base_model else None
        info = await provider.load_model(model, base)
        self.loaded.add(model.id)
        update = dict(info)
        if base is not None:  # an adapter samples as its base does, unless registered otherwise
            update["generation_config"] = base.sampling()
        loaded = model.model_copy(update=update)
        if loaded != model:  # what the provider reports now (a stored record is kept current)
            self.db.execute(
                "UPDATE models SET record = ? WHERE id = ?", (loaded.model_dump_json(), model.id)
            )
        return loaded

    async def _base_of(self, source: AdapterSource, provider_id: str | None) -> Model:
        try:
            base = await self.get_model(source.base_model)
        except NotFoundError:
            raise NotFoundError(
                f"source.base_model: no model {source.base_model!r}", param="source.base_model"
            ) from None
        if base.kind != "base" or base.provider_id != (provider_id or base.provider_id):
            where = f" of provider {provider_id}" if provider_id else ""
            raise InvalidRequestError(
                f"source.base_model: {base.id!r} must be a base model{where}",
                param="source.base_model",
            )
        return base

    async def _check_source(
        self, provider_id: str, source: ModelSource, unpacked: bool = False
    ) -> None:
        """The provider's checks of a source, then the caller's: where it lies in another
        owner's folder (a job's, an imported model's), it is not found, as a path naming nothing."""
        where = await self.providers[provider_id].check_source(source)
        if where is None or unpacked or self.locations is None:
            return
        if not self.locations.usable(where):
            kind = "file" if isinstance(source, GGUFSource) else "dir"
            path = getattr(source, "path", None)
            raise NotFoundError(f"source.path: no {kind} at {path}", param="source.path")

    def _provider_id(self, requested: str | None) -> str:
        if requested is not None:
            if requested not in self.providers:
                raise NotFoundError(
                    f"provider_id: no inference provider {requested!r}", param="provider_id"
                )
            return requested
        if len(self.providers) != 1:
            names = ", ".join(self.providers) or "none configured"
            raise InvalidRequestError(
                f"provider_id: name the inference provider ({names})", param="provider_id"
            )
        return next(iter(self.providers))

    def _exists(self, model_id: str) -> bool:
        return self.db.one("SELECT 1 FROM models WHERE id = ?", (model_id,)) is not None

    def _all(self) -> list[Model]:
        rows = self.db.all("SELECT record FROM models ORDER BY seq")
        return [Model.model_validate(json.loads(r["record"])) for r in rows]


class InferenceRouter:
    """The Inference API: each call goes to the provider of the model it names, with the
    model's sampling defaults filled into the knobs the request leaves unset."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        provider, request = await self._route(request)
        return await provider.chat_completion(request)

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        provider, request = await self._route(request)
        return await provider.completion(request)

    async def batch_chat_completion(
        self, request: BatchChatCompletionRequest
    ) -> BatchChatCompletionResponse:
        provider, request = await self._route(request)
        return await provider.batch_chat_completion(request)

    async def batch_completion(self, request: BatchCompletionRequest) -> BatchCompletionResponse:
        provider, request = await self._route(request)
        return await provider.batch_completion(request)

    async def _route(self, request: R) -> tuple[InferenceProvider, R]:
        provider, model = await self.registry.served(request.model)
        defaults = model.sampling()
        unset = {
            name: value
            for name, value in defaults.model_dump(exclude_none=True).items()
            if getattr(request, name) is None
        }
        return provider, request.model_copy(update=unset) if unset else request
