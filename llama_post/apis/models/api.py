from __future__ import annotations

from typing import Protocol

from llama_post.apis.models.models import (
    DeleteModelResponse,
    ListModelsResponse,
    Model,
    ModelId,
    RegisterModelRequest,
)
from llama_post.schema import creates, webmethod


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
