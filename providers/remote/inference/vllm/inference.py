"""Inference served by a vLLM server (or anything speaking its routes, llama-post included).

The upstream holds the base models it was started with; this provider registers them, passes
chat and completions through (streams, logprobs, stop, seed, structured outputs), and publishes
fine-tuned LoRA adapters to it with vLLM's runtime adapter routes. Paths cross between the two
hosts through the config's `path_map`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
)
from llama_post.apis.inspect import ProviderHealth
from llama_post.apis.models import (
    MODEL_ID_PATTERN,
    AdapterSource,
    LoadLoraAdapterRequest,
    Model,
    ModelInfo,
    ModelSource,
    ModelWeights,
    ProviderModelSource,
    RegisterModelRequest,
    UnloadLoraAdapterRequest,
)
from llama_post.errors import (
    ConfigError,
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    UpstreamError,
)
from llama_post.remote import ROUTES, RemoteClient
from llama_post.storage import resolve_under
from providers.remote.inference.vllm.config import VLLMInferenceConfig
from providers.utils.huggingface import has_chat_template, parameter_count, recommended_sampling

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class VLLMInference:
    def __init__(self, config: VLLMInferenceConfig, provider_id: str) -> None:
        self.config = config
        self.provider_id = provider_id
        key = config.api_key.get_secret_value() if config.api_key else None
        self.client = RemoteClient(
            provider_id,
            config.url,
            api_key=key,
            timeout=config.request_timeout,
            max_retries=config.max_retries,
        )
        self.cards: dict[str, dict[str, Any]] = {}  # the upstream's /v1/models, as last read
        self.upstream_ids: dict[str, str] = {}  # model id -> the upstream's id for it
        # adapter id -> how it was loaded (its folder as the upstream sees it, its base there)
        self.adapters: dict[str, LoadLoraAdapterRequest] = {}
        self.publishing: dict[str, asyncio.Lock] = {}  # one load of an adapter at a time

    async def start(self) -> None:
        try:
            await self._read_cards()
        except UpstreamError as exc:
            if not self.config.optional:
                raise ConfigError(
                    f"provider {self.provider_id!r} (remote::vllm): base_url {self.config.url} "
                    f"is not answering: {exc.message}. Start the upstream first (`make vllm`), "
                    "or set `optional: true` to start without it"
                ) from None
            log.warning("provider %s starts degraded: %s", self.provider_id, exc.message)

    async def shutdown(self) -> None:
        await self.client.close()

    async def health(self) -> ProviderHealth:
        try:
            await self._read_cards(quick=True)
        except LlamaPostError as exc:
            return ProviderHealth(status="Error", message=exc.message)
        return ProviderHealth()

    # -- models --------------------------------------------------------------------------------

    async def discover(self) -> list[RegisterModelRequest]:
        if not self.cards:  # started degraded: look again
            try:
                await self._read_cards(quick=True)
            except LlamaPostError:
                return []
        return [
            RegisterModelRequest(
                model_id=name,
                source=ProviderModelSource(type="provider_model", provider_model_id=name),
            )
            for name, card in self.cards.items()
            if _is_base(card) and re.match(MODEL_ID_PATTERN, name)
        ]

    async def check_source(self, source: ModelSource) -> Path | None:
        if isinstance(source, AdapterSource):
            return await asyncio.to_thread(self._adapter_folder, source)
        if not isinstance(source, ProviderModelSource):
            raise InvalidRequestError(
                f"source.type: provider {self.provider_id!r} (remote::vllm) serves the models "
                "its upstream was started with and LoRA adapters over them; register one as "
                '{"type": "provider_model", "provider_model_id": ...}',
                param="source.type",
            )
        return None

    async def load_model(self, model: Model, base: Model | None) -> ModelInfo:
        if isinstance(model.source, AdapterSource):
            assert base is not None  # the registry hands every adapter its base
            return await self._publish(model, base)
        await self.check_source(model.source)  # refuses what no upstream serves
        assert isinstance(model.source, ProviderModelSource)
        name = model.source.provider_model_id
        card = (await self._read_cards()).get(name)
        if card is None or not _is_base(card):
            served = ", ".join(n for n, c in self.cards.items() if _is_base(c)) or "nothing"
            raise NotFoundError(
                f"source.provider_model_id: {self.config.url} serves no base model {name!r} "
                f"(it serves {served})",
                param="source.provider_model_id",
            )
        self.upstream_ids[model.id] = name
        context = int(card.get("max_model_len") or card.get("context_length") or 0)
        folder = self._local_folder(card)
        if folder is None:
            return ModelInfo(
                context_length=context,
                has_chat_template=True,
                provider_model_id=name,
                max_lora_rank=self.config.max_lora_rank,
            )
        return ModelInfo(
            context_length=context,
            parameter_count=await asyncio.to_thread(parameter_count, folder),
            has_chat_template=has_chat_template(folder),
            generation_config=recommended_sampling(folder),
            provider_model_id=name,
            weights=ModelWeights(path=str(folder)),
            max_lora_rank=self.config.max_lora_rank,
        )

    async def unload_model(self, model_id: str) -> None:
        if model_id in self.adapters:  # a base model stays on the upstream, started with it
            request = UnloadLoraAdapterRequest(lora_name=model_id)
            try:
                await self.client.call(ROUTES["models", "unload_lora_adapter"], request)
            except (NotFoundError, InvalidRequestError) as exc:  # the upstream had lost it
                log.info("adapter %s was not loaded on %s: %s", model_id, self.config.url, exc)
            del self.adapters[model_id]
        self.upstream_ids.pop(model_id, None)

    async def _publish(self, model: Model, base: Model) -> ModelInfo:
        """Hot-load the adapter into the upstream under the model's id."""
        assert isinstance(model.source, AdapterSource)
        folder = await asyncio.to_thread(self._adapter_folder, model.source)
        request = LoadLoraAdapterRequest(
            lora_name=model.id,
            lora_path=self.config.to_upstream(str(folder)),
            base_model=self.upstream_ids.get(base.id, base.provider_model_id or base.id),
        )
        await self._load_adapter(request)
        self.adapters[model.id] = request
        self.upstream_ids[model.id] = model.id
        weights = base.weights and ModelWeights(path=base.weights.path, adapter_path=str(folder))
        return ModelInfo(
            context_length=base.context_length,
            has_chat_template=base.has_chat_template,
            provider_model_id=model.id,
            weights=weights,
        )

    async def _load_adapter(self, request: LoadLoraAdapterRequest) -> None:
        """Load the adapter unless the upstream has it from that folder already (replacing
        another of that name). Loads of one name wait for each other; one the upstream finds
        done meanwhile ("already loaded") is done."""
        async with self.publishing.setdefault(request.lora_name, asyncio.Lock()):
            card = (await self._read_cards()).get(request.lora_name)
            if card is not None and _path_of(card) == request.lora_path:
                return
            if card is not None:  # another adapter under that name
                unload = UnloadLoraAdapterRequest(lora_name=request.lora_name)
                await self.client.call(ROUTES["models", "unload_lora_adapter"], unload)
            try:
                await self.client.call(ROUTES["models", "load_lora_adapter"], request)
            except (InvalidRequestError, ConflictError) as exc:
                if "already" not in exc.message:
                    raise

    def _adapter_folder(self, source: AdapterSource) -> Path:
        folder = resolve_under(source.path, self.config.adapter_dirs, "source.path", kind="dir")
        if not (folder / "adapter_config.json").is_file():
            raise NotFoundError(
                f"source.path: no PEFT adapter in {source.path}", param="source.path"
            )
        try:
            config = json.loads((folder / "adapter_config.json").read_text())
            ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
            rank = max(int(r) for r in ranks)
        except (OSError, ValueError, TypeError, AttributeError):
            raise InvalidRequestError(
                f"source.path: {source.path} is not a PEFT adapter folder", param="source.path"
            ) from None
        if rank > self.config.max_lora_rank:
            raise InvalidRequestError(
                f"source.path: the adapter's LoRA rank is {rank}; provider {self.provider_id!r} "
                f"serves ranks up to {self.config.max_lora_rank} (vLLM's --max-lora-rank)",
                param="source.path",
            )
        return folder

    def _local_folder(self, card: dict[str, Any]) -> Path | None:
        """The base model's folder as this server sees it, if it can read it: from vLLM's
        `root` (the folder it was started with) or a llama-post upstream's `weights`."""
        root = _path_of(card)
        if root is None:
            return None
        folder = Path(self.config.to_local(root))
        return folder if (folder / "config.json").is_file() else None

    async def _read_cards(self, quick: bool = False) -> dict[str, dict[str, Any]]:
        route = ROUTES["models", "list_models"]
        body = await (self.client.probe(route) if quick else self.client.call(route))
        self.cards = {c["id"]: c for c in body.get("data", []) if isinstance(c, dict)}
        return self.cards

    # -- inference -----------------------------------------------------------------------------

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        route = ROUTES["inference", "chat_completion"]
        if request.stream:
            return await self._stream(route, request, ChatCompletionChunk)
        return await self._call(route, request, ChatCompletion)

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        route = ROUTES["inference", "completion"]
        if request.stream:
            return await self._stream(route, request, Completion)
        return await self._call(route, request, Completion)

    async def batch_chat_completion(
        self, request: BatchChatCompletionRequest
    ) -> BatchChatCompletionResponse:
        common = request.model_dump(by_alias=True, exclude={"messages_batch", "stream"})
        singles = [
            ChatCompletionRequest.model_validate({**common, "messages": messages})
            for messages in request.messages_batch
        ]
        route = ROUTES["inference", "chat_completion"]
        answers = await asyncio.gather(*(self._call(route, r, ChatCompletion) for r in singles))
        return BatchChatCompletionResponse(data=list(answers))

    async def batch_completion(self, request: BatchCompletionRequest) -> BatchCompletionResponse:
        common = request.model_dump(by_alias=True, exclude={"prompts", "stream"})
        singles = [
            CompletionRequest.model_validate({**common, "prompt": prompt})
            for prompt in request.prompts
        ]
        route = ROUTES["inference", "completion"]
        answers = await asyncio.gather(*(self._call(route, r, Completion) for r in singles))
        return BatchCompletionResponse(data=list(answers))

    async def _call(self, route: Any, request: Any, shape: type[M]) -> M:
        data = await self._upstream(request, lambda r: self.client.call(route, r))
        return self._read(data, request.model, shape)

    async def _stream(self, route: Any, request: Any, shape: type[M]) -> AsyncIterator[M]:
        events = await self._upstream(request, lambda r: self.client.stream(route, r))

        async def read() -> AsyncIterator[M]:
            try:
                async for event in events:
                    yield self._read(event, request.model, shape)
            finally:
                await events.aclose()  # closes the upstream's response, read to the end or not

        return read()

    async def _upstream(self, request: Any, send: Callable[[Any], Awaitable[Any]]) -> Any:
        """Send the request under the upstream's id for its model. An adapter the upstream has
        lost (vLLM restarted: runtime adapters are not kept) is published again, once."""
        model_id = request.model
        upstream = request.model_copy(update={"model": self.upstream_ids.get(model_id, model_id)})
        try:
            return await send(upstream)
        except NotFoundError:
            loaded = self.adapters.get(model_id)
            if loaded is None or model_id in await self._read_cards():
                raise
            log.warning("%s lost adapter %s; loading it again", self.config.url, model_id)
            await self._load_adapter(loaded)
            return await send(upstream)

    def _read(self, data: Any, model_id: str, shape: type[M]) -> M:
        try:
            return shape.model_validate({**data, "model": model_id})
        except (ValidationError, TypeError) as exc:
            raise UpstreamError(
                f"provider {self.provider_id!r}: {self.config.url} answered in a shape "
                f"llama-post cannot read as {shape.__name__}: {exc}"
            ) from None


def _is_base(card: dict[str, Any]) -> bool:
    """vLLM lists a loaded adapter with its base as `parent`; llama-post with `base_model`."""
    return not card.get("parent") and not card.get("base_model")


def _path_of(card: dict[str, Any]) -> str | None:
    """The folder a model card was loaded from: vLLM's `root`, llama-post's `weights`."""
    weights = card.get("weights") or {}
    path = card.get("root") or weights.get("adapter_path") or weights.get("path")
    return path if isinstance(path, str) else None
