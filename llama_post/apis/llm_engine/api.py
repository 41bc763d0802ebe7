from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from llama_post.apis.llm_engine.models import (
    BatchCompletionsRequest,
    BatchCompletionsResponse,
    CancelFineTuneResponse,
    CompletionRequest,
    CompletionStreamResponse,
    CompletionSyncResponse,
    CreateFineTuneRequest,
    CreateFineTuneResponse,
    DeleteResponse,
    EngineFile,
    FileContentResponse,
    FineTune,
    FineTuneEventsResponse,
    ListFilesResponse,
    ListFineTunesResponse,
    ListModelEndpointsResponse,
    ModelDownloadRequest,
    ModelDownloadResponse,
    ModelEndpoint,
    UploadFileRequest,
    UploadFileResponse,
)
from llama_post.schema import LLM_ENGINE, webmethod

P = "/llm-engine/v1"


class LLMEngine(Protocol):
    """Scale's LLM Engine API (`scale-llm-engine`), under `/llm-engine/`: a translation over
    the native Inference, Files, Datasets, PostTraining and Models APIs. Set the client's
    `LLM_ENGINE_BASE_PATH` to `http://host:port/llm-engine/` (the trailing slash matters)."""

    @webmethod(route=f"{P}/llm/completions-sync", method="POST", compat=LLM_ENGINE)
    async def engine_completion_sync(
        self, model_endpoint_name: str, request: CompletionRequest
    ) -> CompletionSyncResponse:
        """Complete a prompt with the model `model_endpoint_name`."""
        ...

    @webmethod(route=f"{P}/llm/completions-stream", method="POST", compat=LLM_ENGINE)
    async def engine_completion_stream(
        self, model_endpoint_name: str, request: CompletionRequest
    ) -> AsyncIterator[CompletionStreamResponse]:
        """Complete a prompt, token by token as server-sent events (with no `[DONE]`)."""
        ...

    @webmethod(route=f"{P}/llm/batch-completions", method="POST", compat=LLM_ENGINE)
    async def engine_batch_completions(
        self, request: BatchCompletionsRequest
    ) -> BatchCompletionsResponse:
        """Complete many prompts as a batch job; its id is the OpenAI batch's (`/v1/batches`)."""
        ...

    @webmethod(route=f"{P}/llm/fine-tunes", method="POST", compat=LLM_ENGINE)
    async def engine_create_fine_tune(
        self, request: CreateFineTuneRequest
    ) -> CreateFineTuneResponse:
        """Fine-tune a model on an uploaded CSV of `prompt,response` rows (LoRA)."""
        ...

    @webmethod(route=f"{P}/llm/fine-tunes", method="GET", compat=LLM_ENGINE)
    async def engine_list_fine_tunes(self) -> ListFineTunesResponse:
        """The caller's fine-tunes, oldest first."""
        ...

    @webmethod(route=f"{P}/llm/fine-tunes/{{fine_tune_id}}", method="GET", compat=LLM_ENGINE)
    async def engine_get_fine_tune(self, fine_tune_id: str) -> FineTune:
        """A fine-tune's status and, once it succeeds, its model."""
        ...

    @webmethod(route=f"{P}/llm/fine-tunes/{{fine_tune_id}}/cancel", method="PUT", compat=LLM_ENGINE)
    async def engine_cancel_fine_tune(self, fine_tune_id: str) -> CancelFineTuneResponse:
        """Cancel a fine-tune; `success` is false when it had already ended."""
        ...

    @webmethod(route=f"{P}/llm/fine-tunes/{{fine_tune_id}}/events", method="GET", compat=LLM_ENGINE)
    async def engine_fine_tune_events(self, fine_tune_id: str) -> FineTuneEventsResponse:
        """What the fine-tune has done so far, oldest first."""
        ...

    @webmethod(route=f"{P}/files", method="POST", compat=LLM_ENGINE)
    async def engine_upload_file(self, request: UploadFileRequest) -> UploadFileResponse:
        """Upload a file (a training CSV): a Files API file of purpose `fine-tune`."""
        ...

    @webmethod(route=f"{P}/files", method="GET", compat=LLM_ENGINE)
    async def engine_list_files(self) -> ListFilesResponse:
        """The caller's files."""
        ...

    @webmethod(route=f"{P}/files/{{file_id}}", method="GET", compat=LLM_ENGINE)
    async def engine_get_file(self, file_id: str) -> EngineFile:
        """A file's name and size."""
        ...

    @webmethod(route=f"{P}/files/{{file_id}}", method="DELETE", compat=LLM_ENGINE)
    async def engine_delete_file(self, file_id: str) -> DeleteResponse:
        """Delete a file."""
        ...

    @webmethod(route=f"{P}/files/{{file_id}}/content", method="GET", compat=LLM_ENGINE)
    async def engine_file_content(self, file_id: str) -> FileContentResponse:
        """A file's content as text: UTF-8, other bytes as U+FFFD (`/v1/files` has the bytes)."""
        ...

    @webmethod(route=f"{P}/llm/model-endpoints", method="GET", compat=LLM_ENGINE)
    async def engine_list_model_endpoints(self) -> ListModelEndpointsResponse:
        """The served models, as endpoints."""
        ...

    @webmethod(route=f"{P}/llm/model-endpoints/download", method="POST", compat=LLM_ENGINE)
    async def engine_download_model(self, request: ModelDownloadRequest) -> ModelDownloadResponse:
        """A URL for the archive of a fine-tuned model's weights (no key needed to fetch it)."""
        ...

    @webmethod(
        route=f"{P}/llm/model-endpoints/{{model_endpoint_name:path}}",
        method="GET",
        compat=LLM_ENGINE,
    )
    async def engine_get_model_endpoint(self, model_endpoint_name: str) -> ModelEndpoint:
        """A served model (its name may hold `/`: `ft/<fine-tune id>`)."""
        ...

    @webmethod(
        route=f"{P}/llm/model-endpoints/{{model_endpoint_name:path}}",
        method="DELETE",
        compat=LLM_ENGINE,
    )
    async def engine_delete_model_endpoint(self, model_endpoint_name: str) -> DeleteResponse:
        """Stop serving a model (unregister it)."""
        ...
