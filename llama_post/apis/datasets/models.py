from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from llama_post.apis.datasets.purpose import DatasetPurpose as DatasetPurpose  # its old home
from llama_post.apis.datasets.rows import row_schema
from llama_post.schema import StrictModel

Row = dict[str, JsonValue]

DATASET_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN, examples=["my-dataset"])]


_PURPOSE_ALIASES = {"post-training/instruct": "instruct"}


class DatasetFormat(StrEnum):
    jsonl = "jsonl"
    json = "json"
    csv = "csv"
    parquet = "parquet"


class UriDataSource(StrictModel):
    """A local file (a path or `file://` URI under a directory the provider allows), a `data:`
    URI (CSV, JSONL, JSON or Parquet by its media type, base64 or percent-encoded), or
    `huggingface://datasets/<owner>/<name>?split=<split>` (read where the Hub can be reached)."""

    type: Literal["uri"]
    uri: str
    format: DatasetFormat | None = Field(
        None, description="Inferred from the extension (a data: URI: its media type) if unset."
    )


class FileDataSource(StrictModel):
    """A file uploaded through the Files API."""

    type: Literal["file"]
    file_id: str
    format: DatasetFormat | None = Field(None, description="Inferred from the filename if unset.")


class RowsDataSource(StrictModel):
    """Rows given inline."""

    type: Literal["rows"]
    rows: list[Row] = Field(min_length=1)


DataSource = Annotated[UriDataSource | FileDataSource | RowsDataSource, Field(discriminator="type")]


def _rows_fit_the_purpose(schema: dict[str, Any]) -> None:
    """Inline rows must be rows of the request's purpose: one branch per purpose."""
    # `if`/`then`, not a top-level oneOf: client generators read the latter as a union of types.
    schema["allOf"] = [
        {
            "if": {"properties": {"purpose": {"const": purpose.value}}},
            "then": {
                "properties": {
                    "source": {
                        "if": {"properties": {"type": {"const": "rows"}}},
                        "then": {"properties": {"rows": {"items": row_schema(purpose)}}},
                    }
                }
            },
        }
        for purpose in DatasetPurpose
    ]


class RegisterDatasetRequest(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_rows_fit_the_purpose)

    purpose: DatasetPurpose
    source: DataSource
    dataset_id: str | None = Field(None, pattern=DATASET_ID_PATTERN)
    metadata: dict[str, JsonValue] = {}
    provider_id: str | None = Field(None, description="Needed only when several serve datasets.")

    @field_validator("purpose", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return _PURPOSE_ALIASES.get(value, value) if isinstance(value, str) else value


class DatasetOrigin(BaseModel):
    """Where a dataset's rows first came from: a URI, a file id, or inline rows."""

    type: Literal["uri", "file", "rows"]
    uri: str | None = None
    file_id: str | None = None
    format: DatasetFormat | None = None


class Dataset(BaseModel):
    identifier: str
    provider_id: str
    type: Literal["dataset"] = "dataset"
    purpose: DatasetPurpose
    source: DatasetOrigin
    metadata: dict[str, JsonValue]
    row_count: int
    created_at: int


class ListDatasetsResponse(BaseModel):
    data: list[Dataset]


class UnregisterDatasetResponse(BaseModel):
    identifier: str
    deleted: bool


class IterRowsRequest(StrictModel):
    start_index: int = Field(0, ge=0)
    limit: int = Field(
        100,
        ge=-1,
        le=10000,
        description="Rows per page; -1: all the rest.",
        json_schema_extra={"not": {"const": 0}},
    )

    @field_validator("limit")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("limit must be at least 1, or -1 for all the rows")
        return value


class IterRowsResponse(BaseModel):
    data: list[Row]
    has_more: bool
    next_start_index: int | None


class AppendRowsRequest(StrictModel):
    rows: list[Row] = Field(min_length=1)
    dataset_id: str | None = Field(
        None,
        description="Do not send: the path names the dataset. llama-stack-client 0.7 sends "
        "it anyway; it must then be the path's id.",
        json_schema_extra={"readOnly": True},
    )


class AppendRowsResponse(BaseModel):
    identifier: str
    appended: int
    row_count: int
