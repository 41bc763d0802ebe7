from __future__ import annotations

from typing import Protocol

from llama_post.apis.batches.models import (
    Batch,
    BatchId,
    CreateBatchRequest,
    ListBatchesRequest,
    ListBatchesResponse,
)
from llama_post.schema import creates, webmethod


class Batches(Protocol):
    """OpenAI's Batch API: a JSONL file of chat or text completion requests, run in the
    background through the Inference API; the results come back as files."""

    @creates(batch_id="/id")
    @webmethod(route="/v1/batches", method="POST")
    async def create_batch(self, request: CreateBatchRequest) -> Batch:
        """Run every line of an uploaded `batch` file.

        A line that is not a valid request fails alone, in the error file with its line number.
        """
        ...

    @webmethod(route="/v1/batches", method="GET")
    async def list_batches(self, request: ListBatchesRequest) -> ListBatchesResponse:
        """List batches, newest first; page with `after` (the last id of the previous page)."""
        ...

    @webmethod(route="/v1/batches/{batch_id}", method="GET")
    async def retrieve_batch(self, batch_id: BatchId) -> Batch:
        """Get a batch: its status, request counts and, once done, its output and error files."""
        ...

    @webmethod(route="/v1/batches/{batch_id}/cancel", method="POST")
    async def cancel_batch(self, batch_id: BatchId) -> Batch:
        """Cancel a batch: lines not yet run are not run; what ran is still uploaded."""
        ...
