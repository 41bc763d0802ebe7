"""OpenAI's Batch API: the batch object, its create request and its list, in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from llama_post.schema import StrictModel, only

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
WINDOW = "24h"
BatchId = Annotated[
    str, Field(pattern=r"^batch_[0-9a-f]{24}$", examples=["batch_0123456789abcdef01234567"])
]
BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})


class CreateBatchRequest(StrictModel):
    input_file_id: str = Field(
        min_length=1, description="A JSONL file uploaded with purpose `batch`, one request a line."
    )
    # A plain `str` checked by the service, so a wrong value is a 400 naming the field (as
    # OpenAI answers); the spec still states the only values accepted.
    endpoint: str = Field(
        description="The route every line calls.", json_schema_extra={"enum": list(ENDPOINTS)}
    )
    completion_window: str = Field(
        description="Only `24h`: a batch not done by then expires.", json_schema_extra=only(WINDOW)
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | (
        None
    ) = Field(None, max_length=16, description="Up to 16 key-value pairs kept with the batch.")


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = []


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(BaseModel):
    """A batch of requests run in the background; its results are files of the Files API."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = BatchRequestCounts()
    metadata: dict[str, str] | None = None


class ListBatchesRequest(StrictModel):
    after: str | None = Field(None, description="Return batches created before this batch id.")
    limit: int = Field(20, ge=1, le=100)


class ListBatchesResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool
