from __future__ import annotations

from typing import Protocol

from llama_post.apis.datasets.models import (
    AppendRowsRequest,
    AppendRowsResponse,
    Dataset,
    IterRowsRequest,
    IterRowsResponse,
    ListDatasetsResponse,
    RegisterDatasetRequest,
    UnregisterDatasetResponse,
)
from llama_post.schema import webmethod


class Datasets(Protocol):
    """Datasets for post-training, with rows validated against their purpose's schema."""

    @webmethod(route="/v1/datasets", method="POST")
    async def register_dataset(self, request: RegisterDatasetRequest) -> Dataset:
        """Register a dataset from an uploaded file, a local file or inline rows.

        Every row is validated; a bad row is reported with its row number and field.
        """
        ...

    @webmethod(route="/v1/datasets", method="GET")
    async def list_datasets(self) -> ListDatasetsResponse:
        """List registered datasets."""
        ...

    @webmethod(route="/v1/datasets/{dataset_id}", method="GET")
    async def get_dataset(self, dataset_id: str) -> Dataset:
        """Get one dataset."""
        ...

    @webmethod(route="/v1/datasets/{dataset_id}", method="DELETE")
    async def unregister_dataset(self, dataset_id: str) -> UnregisterDatasetResponse:
        """Unregister a dataset and delete its stored rows."""
        ...

    @webmethod(route="/v1/datasetio/iterrows/{dataset_id}", method="GET")
    async def iterrows(self, dataset_id: str, request: IterRowsRequest) -> IterRowsResponse:
        """Read a page of rows, from `start_index`."""
        ...

    @webmethod(route="/v1/datasetio/append-rows/{dataset_id}", method="POST")
    async def append_rows(self, dataset_id: str, request: AppendRowsRequest) -> AppendRowsResponse:
        """Append rows, validated like registration; all are appended or none."""
        ...
