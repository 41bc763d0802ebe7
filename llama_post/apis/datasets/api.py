from __future__ import annotations

from typing import Protocol

from llama_post.apis.datasets.models import (
    AppendRowsRequest,
    AppendRowsResponse,
    Dataset,
    DatasetId,
    IterRowsRequest,
    IterRowsResponse,
    ListDatasetsResponse,
    RegisterDatasetRequest,
    UnregisterDatasetResponse,
)
from llama_post.schema import V0_7, creates, webmethod


class Datasets(Protocol):
    """Datasets for post-training, with rows validated against their purpose's schema."""

    @creates(dataset_id="/identifier")
    @webmethod(route="/v1/datasets", method="POST")
    @webmethod(route="/v1beta/datasets", method="POST", compat=V0_7)
    async def register_dataset(self, request: RegisterDatasetRequest) -> Dataset:
        """Register a dataset from an uploaded file, a local file or inline rows.

        Every row is validated; a bad row is reported with its row number and field.
        """
        ...

    @webmethod(route="/v1/datasets", method="GET")
    @webmethod(route="/v1beta/datasets", method="GET", compat=V0_7)
    async def list_datasets(self) -> ListDatasetsResponse:
        """List registered datasets."""
        ...

    @webmethod(route="/v1/datasets/{dataset_id}", method="GET")
    @webmethod(route="/v1beta/datasets/{dataset_id}", method="GET", compat=V0_7)
    async def get_dataset(self, dataset_id: DatasetId) -> Dataset:
        """Get one dataset."""
        ...

    @webmethod(route="/v1/datasets/{dataset_id}", method="DELETE")
    @webmethod(route="/v1beta/datasets/{dataset_id}", method="DELETE", compat=V0_7)
    async def unregister_dataset(self, dataset_id: DatasetId) -> UnregisterDatasetResponse:
        """Unregister a dataset and delete its stored rows."""
        ...

    @webmethod(route="/v1/datasetio/iterrows/{dataset_id}", method="GET")
    @webmethod(route="/v1beta/datasetio/iterrows/{dataset_id}", method="GET", compat=V0_7)
    async def iterrows(self, dataset_id: DatasetId, request: IterRowsRequest) -> IterRowsResponse:
        """Read a page of rows, from `start_index`."""
        ...

    @webmethod(route="/v1/datasetio/append-rows/{dataset_id}", method="POST")
    @webmethod(route="/v1beta/datasetio/append-rows/{dataset_id}", method="POST", compat=V0_7)
    async def append_rows(
        self, dataset_id: DatasetId, request: AppendRowsRequest
    ) -> AppendRowsResponse:
        """Append rows, validated like registration; all are appended or none."""
        ...
