"""Readers for JSONL, JSON, CSV and Parquet that yield rows one at a time.

Each yields `(row_number, row)` with `row` a dict, or `(row_number, problem)` with a message for
a row that cannot even be parsed. Row numbers count data rows from 1. A problem with the whole
file (not UTF-8, not Parquet, missing columns) raises `InvalidRequestError` at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llama_post.apis.datasets import DatasetFormat
from llama_post.apis.datasets.rows import STRUCTURED_COLUMNS
from llama_post.codec import MAX_NESTING, too_deep
from llama_post.errors import InvalidRequestError

TOO_DEEP = f"nested deeper than {MAX_NESTING} levels"
RowOrProblem = tuple[int, dict[str, Any] | str]
ColumnCheck = Callable[[list[str]], list[str]]

EXTENSIONS = {
    ".jsonl": DatasetFormat.jsonl,
    ".ndjson": DatasetFormat.jsonl,
    ".json": DatasetFormat.json,
    ".csv": DatasetFormat.csv,
    ".parquet": DatasetFormat.parquet,
    ".pq": DatasetFormat.parquet,
}


def infer_format(name: str, field: str) -> DatasetFormat:
    fmt = EXTENSIONS.get(Path(name).suffix.lower())
    if fmt is None:
        known = ", ".join(EXTENSIONS)
        raise InvalidRequestError(
            f"cannot tell the format of {name!r} from its extension ({known}); set {field}",
            param=field,
        )
    return fmt


def read_rows(
    path: Path, fmt: DatasetFormat, max_row_bytes: int, check_columns: ColumnCheck
) -> Iterator[RowOrProblem]:
    readers = {
        DatasetFormat.jsonl: _jsonl,
        DatasetFormat.json: _json,
        DatasetFormat.csv: _csv,
        DatasetFormat.parquet: _parquet,
    }
    return readers[fmt](path, max_row_bytes, check_columns)


def _jsonl(path: Path, max_row_bytes: int, _: ColumnCheck) -> Iterator[RowOrProblem]:
    number = 0
    with path.open("rb") as f:
        while line := f.readline(max_row_bytes + 1):
            if len(line) > max_row_bytes and not line.endswith(b"\n"):
                number += 1
                size = len(line) + _skip_line(f)
                yield number, f"row is {size} bytes, over the {max_row_bytes}-byte limit"
                continue
            if not line.strip():
                continue
            number += 1
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, f"not valid UTF-8 (byte {exc.start} of the line)"
                continue
            yield number, _parse_object(text)


def _skip_line(f: io.BufferedReader) -> int:
    skipped = 0
    while chunk := f.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _parse_object(text: str) -> dict[str, Any] | str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return TOO_DEEP
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    if too_deep(value) is not None:
        return TOO_DEEP
    return value


def _json(path: Path, max_row_bytes: int, _: ColumnCheck) -> Iterator[RowOrProblem]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"the file is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"the file is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidRequestError(f"the file is {TOO_DEEP}") from None
    if isinstance(data, dict) and isinstance(data.get("rows", data.get("data")), list):
        data = data.get("rows", data.get("data"))
    if not isinstance(data, list):
        raise InvalidRequestError("a JSON dataset must be an array of row objects")
    for number, value in enumerate(data, start=1):
        if not isinstance(value, dict):
            yield number, f"expected a JSON object, got {type(value).__name__}"
        elif too_deep(value) is not None:
            yield number, TOO_DEEP
        else:
            yield number, value


def _csv(path: Path, max_row_bytes: int, check_columns: ColumnCheck) -> Iterator[RowOrProblem]:
    csv.field_size_limit(max_row_bytes)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
            if header is None:
                return
            missing = check_columns(list(header))
            if missing:
                raise InvalidRequestError(
                    f"the CSV is missing column(s) {', '.join(missing)}; "
                    f"its header is {', '.join(header)}"
                )
            for number, record in enumerate(reader, start=1):
                yield number, _csv_row(record)
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"the file is not valid UTF-8 (byte {exc.start})") from None
        except csv.Error as exc:
            raise InvalidRequestError(
                f"the CSV cannot be read at line {reader.line_num}: {exc}"
            ) from None


def _csv_row(record: dict[str | Any, Any]) -> dict[str, Any] | str:
    if None in record:
        return f"has {len(record[None])} more value(s) than the header has columns"
    row: dict[str, Any] = {}
    for key, value in record.items():
        if value is None:
            continue  # a short row: the missing field is reported by row validation
        if key in STRUCTURED_COLUMNS and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                return f"{key}: not valid JSON: {exc.msg}"
            except RecursionError:
                return f"{key}: {TOO_DEEP}"
        row[key] = value
    return row


def _parquet(path: Path, max_row_bytes: int, check_columns: ColumnCheck) -> Iterator[RowOrProblem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidRequestError(f"the file is not a readable Parquet file: {exc}") from None
    schema = parquet.schema_arrow
    missing = check_columns(list(schema.names))
    if missing:
        raise InvalidRequestError(
            f"the Parquet file is missing column(s) {', '.join(missing)}; "
            f"its schema is {_describe(schema)}"
        )
    wrong = [f"{f.name} is {f.type}" for f in schema if not _fits(f.name, f.type)]
    if wrong:
        raise InvalidRequestError(
            f"the Parquet schema does not fit: {', '.join(wrong)} "
            "(prompt/completion must be strings; messages a list of {role, content} structs)"
        )
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _fits(name: str, type_: Any) -> bool:
    import pyarrow as pa

    if name in ("prompt", "completion"):
        return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_))
    if name == "messages":
        return bool(pa.types.is_list(type_) or pa.types.is_large_list(type_))
    if name in ("chosen", "rejected"):
        return bool(
            pa.types.is_string(type_)
            or pa.types.is_large_string(type_)
            or pa.types.is_list(type_)
            or pa.types.is_large_list(type_)
        )
    return True


def _describe(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
