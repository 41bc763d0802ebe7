from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from llama_post.apis.inference.models import (
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
from llama_post.apis.models import Model, ModelInfo, ModelSource, RegisterModelRequest
from llama_post.schema import V0_2, webmethod


class Inference(Protocol):
    """Chat and text completions, OpenAI-compatible: its SDK works against these routes."""

    @webmethod(route="/v1/chat/completions", method="POST")
    @webmethod(route="/v1/openai/v1/chat/completions", method="POST", compat=V0_2)
    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        """Answer a conversation with the model's own chat template.

        With `stream: true` the answer arrives as server-sent chunks.
        """
        ...

    @webmethod(route="/v1/completions", method="POST")
    @webmethod(route="/v1/openai/v1/completions", method="POST", compat=V0_2)
    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        """Continue a prompt (or a list of prompts, one choice each)."""
        ...

    @webmethod(route="/v1/inference/batch-chat-completion", method="POST")
    async def batch_chat_completion(
        self, request: BatchChatCompletionRequest
    ) -> BatchChatCompletionResponse:
        """Answer many conversations at once; they are decoded together."""
        ...

    @webmethod(route="/v1/inference/batch-completion", method="POST")
    async def batch_completion(self, request: BatchCompletionRequest) -> BatchCompletionResponse:
        """Continue many prompts at once; they are decoded together."""
        ...


class InferenceProvider(Inference, Protocol):
    """What an inference provider implements besides the routes: the models it serves.

    The registry owns the records; a provider loads what it is handed. A base model may be held
    remotely (`ModelInfo.provider_model_id`, `weights=None` where this server cannot read it); an
    adapter is published to its base's provider by `load_model` (loaded into its engine, or
    hot-loaded into a remote one)."""

    async def load_model(self, model: Model, base: Model | None) -> ModelInfo:
        """Serve `model` (an adapter over `base`); report what it is and where its weights are."""
        ...

    async def unload_model(self, model_id: str) -> None: ...

    async def check_source(self, source: ModelSource) -> Path | None:
        """Refuse (InvalidRequestError) a source this provider may not or cannot read; answer
        where on this server it reads it (resolved), or None where it reads nothing here (an
        upstream's model), so the registry can check that the caller may use that folder."""
        ...

    async def discover(self) -> list[RegisterModelRequest]:
        """The base models this provider serves without being told (a remote upstream's)."""
        ...

    async def health(self) -> ProviderHealth:
        """Whether the provider can answer now (its upstream is reachable)."""
        ...
