from __future__ import annotations

from typing import Protocol

from llama_post.apis.models.models import (
    DeleteModelResponse,
    ListModelsResponse,
    LoadLoraAdapterRequest,
    Model,
    ModelId,
    RegisterModelRequest,
    UnloadLoraAdapterRequest,
)
from llama_post.schema import VLLM, creates, webmethod


class Models(Protocol):
    """Servable models: base models and the adapters trained over them."""

    @webmethod(route="/v1/models", method="GET")
    async def list_models(self) -> ListModelsResponse:
        """List models; OpenAI's `client.models.list()` reads this."""
        ...

    @webmethod(route="/v1/models/{model_id:path}", method="GET")
    async def get_model(self, model_id: ModelId) -> Model:
        """Get one model. Its id may contain `/`."""
        ...

    @creates(model_id="/id")
    @webmethod(route="/v1/models", method="POST")
    async def register_model(self, request: RegisterModelRequest) -> Model:
        """Register a local model folder, a GGUF file or a LoRA adapter over a registered base.

        The provider loads it before answering, so a model that cannot load is refused here.
        """
        ...

    @webmethod(route="/v1/models/{model_id:path}", method="DELETE")
    async def unregister_model(self, model_id: ModelId) -> DeleteModelResponse:
        """Unregister a model; a base model with adapters over it is refused."""
        ...

    @creates(model_id="/id")
    @webmethod(route="/v1/load_lora_adapter", method="POST", compat=VLLM)
    async def load_lora_adapter(self, request: LoadLoraAdapterRequest) -> Model:
        """vLLM's adapter hot-load: registers `lora_path` as the adapter `lora_name` over the
        base model (the only one, or `base_model`)."""
        ...

    @webmethod(route="/v1/unload_lora_adapter", method="POST", compat=VLLM)
    async def unload_lora_adapter(self, request: UnloadLoraAdapterRequest) -> DeleteModelResponse:
        """vLLM's adapter unload: unregisters the adapter `lora_name`."""
        ...
