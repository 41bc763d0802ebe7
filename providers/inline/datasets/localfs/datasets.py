"""Datasets on the local disk.

Each dataset is a folder under `storage_dir/data/<id>` holding its validated rows as JSONL and an
index of where each row starts, so a page of rows is one seek. SQLite holds the metadata and the
committed row count: an append cut off by a crash leaves bytes past that count, which the next
append truncates, so readers never see half a write.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from llama_post.apis.datasets import (
    AppendRowsRequest,
    AppendRowsResponse,
    Dataset,
    DatasetFormat,
    DatasetPurpose,
    FileDataSource,
    IterRowsRequest,
    IterRowsResponse,
    ListDatasetsResponse,
    RegisterDatasetRequest,
    RowsDataSource,
    UnregisterDatasetResponse,
    UriDataSource,
)
from llama_post.apis.datasets.models import DATASET_ID_PATTERN, DatasetOrigin
from llama_post.apis.datasets.rows import ROW_MODELS, missing_columns
from llama_post.apis.files import Files
from llama_post.errors import (
    ConflictError,
    ErrorDetail,
    InvalidRequestError,
    NotFoundError,
    _join_loc,
)
from llama_post.storage import Database, check_id, resolve_under
from providers.inline.datasets.localfs.config import LocalDatasetsConfig
from providers.inline.datasets.localfs.formats import RowOrProblem, infer_format, read_rows
from providers.inline.datasets.localfs.sources import (
    huggingface_rows,
    load_huggingface,
    write_data_uri,
)

DATASET_ID = re.compile(DATASET_ID_PATTERN)
OFFSET = struct.Struct("<Q")
SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    purpose TEXT NOT NULL,
    origin TEXT NOT NULL,
    metadata TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    byte_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
"""


class LocalDatasets:
    provider_id = "localfs"

    def __init__(self, config: LocalDatasetsConfig, files: Files) -> None:
        self.config = config
        self.files = files
        self.usable: Callable[[Path], bool] = lambda path: True  # the stack's Locations
        self.data = config.storage_dir / "data"
        self.tmp = config.storage_dir / "tmp"
        self.data.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.db = Database(config.storage_dir / "datasets.db", SCHEMA)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- registry ------------------------------------------------------------------------------

    async def register_dataset(self, request: RegisterDatasetRequest) -> Dataset:
        dataset_id = request.dataset_id or f"dataset-{secrets.token_hex(8)}"
        async with self._lock(dataset_id):
            if self._row(dataset_id) is not None:
                raise ConflictError(f"dataset {dataset_id!r} already exists", param="dataset_id")
            staging = self.tmp / f"{dataset_id}.{secrets.token_hex(4)}"
            staging.mkdir()
            try:
                rows, origin = await self._open_source(request, staging)
                count, size = await asyncio.to_thread(
                    self._write_rows, rows, request.purpose, staging / "rows", 0, 0
                )
                target = self.data / dataset_id
                shutil.rmtree(target, ignore_errors=True)  # left by a crash before the insert
                (staging / "rows").replace(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            created = int(time.time())
            self.db.execute(
                "INSERT INTO datasets (id, purpose, origin, metadata, row_count, byte_size, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    dataset_id,
                    request.purpose.value,
                    origin.model_dump_json(),
                    json.dumps(request.metadata),
                    count,
                    size,
                    created,
                ),
            )
        return await self.get_dataset(dataset_id)

    async def list_datasets(self) -> ListDatasetsResponse:
        return ListDatasetsResponse(
            data=[self._to_dataset(r) for r in self.db.all("SELECT * FROM datasets ORDER BY seq")]
        )

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return self._to_dataset(self._existing(dataset_id))

    async def unregister_dataset(self, dataset_id: str) -> UnregisterDatasetResponse:
        self._existing(dataset_id)
        async with self._lock(dataset_id):
            self.db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
            await asyncio.to_thread(shutil.rmtree, self.data / dataset_id, True)
        return UnregisterDatasetResponse(identifier=dataset_id, deleted=True)

    # -- rows ----------------------------------------------------------------------------------

    async def iterrows(self, dataset_id: str, request: IterRowsRequest) -> IterRowsResponse:
        row = self._existing(dataset_id)
        count, size = row["row_count"], row["byte_size"]
        start = min(request.start_index, count)
        stop = count if request.limit == -1 else min(start + request.limit, count)
        rows = await asyncio.to_thread(self._read_rows, self.data / dataset_id, start, stop, size)
        return IterRowsResponse(
            data=rows, has_more=stop < count, next_start_index=stop if stop < count else None
        )

    async def append_rows(self, dataset_id: str, request: AppendRowsRequest) -> AppendRowsResponse:
        self._existing(dataset_id)
        if request.dataset_id not in (None, dataset_id):
            self._existing(request.dataset_id)  # a body naming no dataset: 404, as the path would
            raise InvalidRequestError(
                f"dataset_id: the body names {request.dataset_id!r}, the path {dataset_id!r}",
                param="dataset_id",
            )
        async with self._lock(dataset_id):
            row = self._existing(dataset_id)
            purpose = DatasetPurpose(row["purpose"])
            count, size = await asyncio.to_thread(
                self._write_rows,
                enumerate(request.rows, start=1),
                purpose,
                self.data / dataset_id,
                row["row_count"],
                row["byte_size"],
            )
            self.db.execute(
                "UPDATE datasets SET row_count = ?, byte_size = ? WHERE id = ?",
                (count, size, dataset_id),
            )
        return AppendRowsResponse(
            identifier=dataset_id, appended=count - row["row_count"], row_count=count
        )

    def use_locations(self, usable: Callable[[Path], bool]) -> None:
        """How to tell whether the caller may read a `uri` source's file, once resolved: the
        stack's `Locations.usable` (another owner's job and model folders are not theirs)."""
        self.usable = usable

    async def shutdown(self) -> None:
        self.db.close()

    # -- helpers -------------------------------------------------------------------------------

    async def _open_source(
        self, request: RegisterDatasetRequest, staging: Path
    ) -> tuple[Iterable[RowOrProblem], DatasetOrigin]:
        source = request.source
        if isinstance(source, RowsDataSource):
            return enumerate(source.rows, start=1), DatasetOrigin(type="rows")
        if isinstance(source, UriDataSource) and source.uri.startswith("huggingface://"):
            loaded = await asyncio.to_thread(load_huggingface, source.uri)
            return huggingface_rows(loaded), DatasetOrigin(type="uri", uri=source.uri)
        if isinstance(source, UriDataSource) and source.uri.startswith("data:"):
            path = staging / "source"
            fmt = await asyncio.to_thread(write_data_uri, source.uri, source.format, path)
            origin = DatasetOrigin(type="uri", uri=_shortened(source.uri), format=fmt)
        elif isinstance(source, UriDataSource):
            named = _uri_to_path(source.uri)
            path = resolve_under(named, self.config.allowed_dirs, "source.uri")
            if not self.usable(path):  # in another owner's job or model folder: as no file
                raise NotFoundError(f"source.uri: no file at {named}", param="source.uri")
            fmt = source.format or infer_format(path.name, "source.format")
            origin = DatasetOrigin(type="uri", uri=source.uri, format=fmt)
        else:
            path, fmt = await self._download(source, staging)
            origin = DatasetOrigin(type="file", file_id=source.file_id, format=fmt)

        def check(columns: list[str]) -> list[str]:
            return missing_columns(request.purpose, columns)

        return read_rows(path, fmt, self.config.max_row_bytes, check), origin

    async def _download(self, source: FileDataSource, staging: Path) -> tuple[Path, DatasetFormat]:
        try:
            meta = await self.files.retrieve_file(source.file_id)
        except NotFoundError:
            raise NotFoundError(
                f"source.file_id: no uploaded file with id {source.file_id!r}",
                param="source.file_id",
            ) from None
        fmt = source.format or infer_format(meta.filename, "source.format")
        content = await self.files.retrieve_file_content(source.file_id)
        path = staging / "source"
        with path.open("wb") as out:
            async for chunk in content.chunks:
                await asyncio.to_thread(out.write, chunk)
        return path, fmt

    def _write_rows(
        self,
        rows: Iterable[RowOrProblem],
        purpose: DatasetPurpose,
        folder: Path,
        count: int,
        size: int,
    ) -> tuple[int, int]:
        """Validate rows and append them after the committed `count` rows (`size` bytes).

        Returns the new count and size. On any bad row nothing is kept and the error lists the
        bad rows (up to `max_reported_errors`) with their row numbers and fields.
        """
        model = ROW_MODELS[purpose]
        limit = self.config.max_row_bytes
        folder.mkdir(exist_ok=True)
        problems: list[ErrorDetail] = []
        bad_rows: list[int] = []
        seen = 0
        with (folder / "rows.jsonl").open("ab") as data, (folder / "index").open("ab") as index:
            data.truncate(size)
            index.truncate(count * OFFSET.size)
            data.seek(size)
            index.seek(count * OFFSET.size)
            position = size
            for number, item in rows:
                seen += 1
                line = _check(item, model, number, limit)
                if isinstance(line, list):
                    bad_rows.append(number)
                    if len(bad_rows) <= self.config.max_reported_errors:
                        problems += line
                    continue
                if bad_rows:
                    continue  # keep validating to report every bad row, but write nothing
                index.write(OFFSET.pack(position))
                data.write(line)
                position += len(line)
            if bad_rows:
                data.truncate(size)
                index.truncate(count * OFFSET.size)
                raise _rows_error(bad_rows, seen, problems)
            if seen == 0:
                raise InvalidRequestError("the dataset has no rows", param="source")
            data.flush()
            index.flush()
        return count + seen, position

    def _read_rows(self, folder: Path, start: int, stop: int, size: int) -> list[dict[str, Any]]:
        if start >= stop:
            return []
        with (folder / "index").open("rb") as index:
            index.seek(start * OFFSET.size)
            raw = index.read((stop - start + 1) * OFFSET.size)
        offsets = [OFFSET.unpack_from(raw, i)[0] for i in range(0, len(raw), OFFSET.size)]
        end = offsets[stop - start] if len(offsets) > stop - start else size
        with (folder / "rows.jsonl").open("rb") as data:
            data.seek(offsets[0])
            chunk = data.read(end - offsets[0])
        return [json.loads(line) for line in chunk.splitlines()]

    def _lock(self, dataset_id: str) -> asyncio.Lock:
        return self._locks.setdefault(dataset_id, asyncio.Lock())

    def _row(self, dataset_id: str) -> Any:
        return self.db.one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))

    def _existing(self, dataset_id: str) -> Any:
        check_id(dataset_id, DATASET_ID, "dataset")
        row = self._row(dataset_id)
        if row is None:
            raise NotFoundError(f"no dataset {dataset_id!r}", param="dataset_id")
        return row

    def _to_dataset(self, row: Any) -> Dataset:
        return Dataset(
            identifier=row["id"],
            provider_id=self.provider_id,
            purpose=DatasetPurpose(row["purpose"]),
            source=DatasetOrigin.model_validate_json(row["origin"]),
            metadata=json.loads(row["metadata"]),
            row_count=row["row_count"],
            created_at=row["created_at"],
        )


def _check(
    item: dict[str, Any] | str, model: Any, number: int, limit: int
) -> bytes | list[ErrorDetail]:
    """The row's stored line, or what is wrong with it."""
    if isinstance(item, str):
        return [ErrorDetail(row=number, message=item)]
    try:
        valid = model.model_validate(item)
    except ValidationError as exc:
        return [
            ErrorDetail(row=number, field=_join_loc("", e["loc"]) or None, message=e["msg"])
            for e in exc.errors()
        ]
    try:
        line = json.dumps(valid.model_dump(mode="json", exclude_unset=True), ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # a value JSON cannot hold (from a Hub dataset)
        return [ErrorDetail(row=number, message=f"row cannot be stored as JSON: {exc}")]
    encoded = line.encode("utf-8") + b"\n"
    if len(encoded) > limit:
        return [
            ErrorDetail(
                row=number, message=f"row is {len(encoded)} bytes, over the {limit}-byte limit"
            )
        ]
    return encoded


def _rows_error(bad_rows: list[int], seen: int, problems: list[ErrorDetail]) -> InvalidRequestError:
    shown = "; ".join(
        f"row {p.row}" + (f" field {p.field}" if p.field else "") + f": {p.message}"
        for p in problems[:5]
    )
    more = "" if len(bad_rows) <= len({p.row for p in problems[:5]}) else " ..."
    return InvalidRequestError(
        f"{len(bad_rows)} of {seen} rows are invalid: {shown}{more}",
        param=f"rows[{bad_rows[0]}]",
        details=problems,
    )


def _shortened(uri: str, keep: int = 80) -> str:
    """A data: URI as the dataset's origin records it: its header and the start of its data."""
    return uri if len(uri) <= keep else f"{uri[:keep]}..."


def _uri_to_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidRequestError("source.uri: file:// URIs must be local", param="source.uri")
        return unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise InvalidRequestError(
            f"source.uri: {parsed.scheme}:// cannot be read; give a local path or file:// URI, "
            "a data: URI, a huggingface://datasets/<owner>/<name> URI, or upload the file "
            "through /v1/files and use a `file` source",
            param="source.uri",
        )
    return uri
