from llama_post.apis.batches.api import Batches
from llama_post.apis.batches.models import (
    ENDPOINTS,
    FINAL,
    WINDOW,
    Batch,
    BatchError,
    BatchErrors,
    BatchId,
    BatchRequestCounts,
    BatchStatus,
    CreateBatchRequest,
    ListBatchesRequest,
    ListBatchesResponse,
)

__all__ = [
    "ENDPOINTS",
    "FINAL",
    "WINDOW",
    "Batch",
    "BatchError",
    "BatchErrors",
    "BatchId",
    "BatchRequestCounts",
    "BatchStatus",
    "Batches",
    "CreateBatchRequest",
    "ListBatchesRequest",
    "ListBatchesResponse",
]
