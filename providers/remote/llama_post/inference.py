"""Inference on a remote llama-post: its models, served here under their own ids.

Chat, completions and their batches are the remote's routes (`RemoteApi`); the models are the
ones the remote serves, bases and adapters alike (`discover`), each registered here with a
`provider_model` source naming the remote's id. Weights stay there (`weights` is null), so a job
here cannot start from them, and an adapter is published on the remote itself (register it there,
from an archive if it was trained elsewhere), not pushed from here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llama_post.apis.inspect import ProviderHealth
from llama_post.apis.models import (
    MODEL_ID_PATTERN,
    ListModelsResponse,
    Model,
    ModelInfo,
    ModelSource,
    ProviderModelSource,
    RegisterModelRequest,
)
from llama_post.errors import InvalidRequestError, NotFoundError
from providers.remote.llama_post.client import RemoteApi


class RemoteInference:
    def __init__(self, inference: RemoteApi, models: RemoteApi) -> None:
        self.inference = inference
        self.models = models
        self.ids: dict[str, str] = {}  # model id here -> the remote's

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inference"], name)

    async def _call(self, name: str, request: Any) -> Any:
        remote_id = self.ids.get(request.model, request.model)
        method = getattr(self.inference, name)
        return await method(request.model_copy(update={"model": remote_id}))

    async def chat_completion(self, request: Any) -> Any:
        return await self._call("chat_completion", request)

    async def completion(self, request: Any) -> Any:
        return await self._call("completion", request)

    async def batch_chat_completion(self, request: Any) -> Any:
        return await self._call("batch_chat_completion", request)

    async def batch_completion(self, request: Any) -> Any:
        return await self._call("batch_completion", request)

    async def discover(self) -> list[RegisterModelRequest]:
        listed: ListModelsResponse = await self.models.list_models()
        return [
            RegisterModelRequest(
                model_id=m.id,
                source=ProviderModelSource(type="provider_model", provider_model_id=m.id),
            )
            for m in listed.data
            if re.match(MODEL_ID_PATTERN, m.id)
        ]

    async def check_source(self, source: ModelSource) -> Path | None:
        if not isinstance(source, ProviderModelSource):
            raise InvalidRequestError(
                f"source.type: remote::llama-post serves the models its remote serves; register "
                f"{source.type} sources there and they appear here",
                param="source.type",
            )
        return None

    async def load_model(self, model: Model, base: Model | None) -> ModelInfo:
        await self.check_source(model.source)
        assert isinstance(model.source, ProviderModelSource)
        name = model.source.provider_model_id
        try:
            remote: Model = await self.models.get_model(name)
        except NotFoundError:
            raise NotFoundError(
                f"source.provider_model_id: {self.models.client.base_url} serves no {name!r}",
                param="source.provider_model_id",
            ) from None
        self.ids[model.id] = name
        return ModelInfo(
            context_length=remote.context_length,
            parameter_count=remote.parameter_count,
            has_chat_template=remote.has_chat_template,
            generation_config=remote.sampling(),
            provider_model_id=name,
            max_lora_rank=remote.max_lora_rank,
            dtype=remote.dtype,
        )

    async def unload_model(self, model_id: str) -> None:
        self.ids.pop(model_id, None)

    async def health(self) -> ProviderHealth:
        return await self.inference.health()

    async def shutdown(self) -> None:
        await self.inference.shutdown()
