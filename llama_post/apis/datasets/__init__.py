from llama_post.apis.datasets.api import Datasets
from llama_post.apis.datasets.models import (
    AppendRowsRequest,
    AppendRowsResponse,
    Dataset,
    DatasetFormat,
    DataSource,
    FileDataSource,
    IterRowsRequest,
    IterRowsResponse,
    ListDatasetsResponse,
    RegisterDatasetRequest,
    RowsDataSource,
    UnregisterDatasetResponse,
    UriDataSource,
)
from llama_post.apis.datasets.purpose import DatasetPurpose

__all__ = [
    "AppendRowsRequest",
    "AppendRowsResponse",
    "DataSource",
    "Dataset",
    "DatasetFormat",
    "DatasetPurpose",
    "Datasets",
    "FileDataSource",
    "IterRowsRequest",
    "IterRowsResponse",
    "ListDatasetsResponse",
    "RegisterDatasetRequest",
    "RowsDataSource",
    "UnregisterDatasetResponse",
    "UriDataSource",
]
