"""Sources named by a URI that is not a local path: `data:` URIs (the rows inline, as Llama
Stack's clients send a small CSV or JSONL file) and `huggingface://datasets/<repo>?split=...`
(read through the `datasets` library when the Hub can be reached)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlparse

from llama_post.apis.datasets import DatasetFormat
from llama_post.errors import InvalidRequestError
from providers.inline.datasets.localfs.formats import RowOrProblem

FIELD = "source.uri"
MEDIA_TYPES = {
    "text/csv": DatasetFormat.csv,
    "application/csv": DatasetFormat.csv,
    "application/jsonl": DatasetFormat.jsonl,
    "application/jsonlines": DatasetFormat.jsonl,
    "application/x-jsonlines": DatasetFormat.jsonl,
    "application/ndjson": DatasetFormat.jsonl,
    "application/x-ndjson": DatasetFormat.jsonl,
    "application/json": DatasetFormat.json,
    "application/vnd.apache.parquet": DatasetFormat.parquet,
    "application/x-parquet": DatasetFormat.parquet,
}
# What `load_dataset` may be told from the URI's query; anything else (trust_remote_code, ...)
# is refused by name.
HF_PARAMETERS = ("split", "name", "revision", "data_dir")


def write_data_uri(uri: str, fmt: DatasetFormat | None, target: Path) -> DatasetFormat:
    """Decode `data:[<media type>][;base64],<data>` into `target`; the format is `fmt`, else
    the media type's (any other `text/` type is CSV, as Llama Stack reads it)."""
    header, comma, payload = uri.removeprefix("data:").partition(",")
    if not comma:
        raise InvalidRequestError(
            f"{FIELD}: a data: URI is data:<media type>[;base64],<data>; this one has no comma",
            param=FIELD,
        )
    media, *params = (p.strip() for p in header.split(";"))
    media = media.lower() or "text/plain"
    raw = unquote_to_bytes(payload)
    if "base64" in params:
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(
                f"{FIELD}: the data: URI's base64 payload cannot be decoded", param=FIELD
            ) from None
    if fmt is None:
        fmt = MEDIA_TYPES.get(media) or (DatasetFormat.csv if media.startswith("text/") else None)
    if fmt is None:
        known = ", ".join(MEDIA_TYPES)
        raise InvalidRequestError(
            f"{FIELD}: cannot read a data: URI of media type {media!r}; use one of {known} "
            "(or any text/ type, read as CSV), or set source.format",
            param=FIELD,
        )
    target.write_bytes(raw)
    return fmt


def load_huggingface(uri: str) -> Any:
    """The split a `huggingface://datasets/<repo>?split=...` URI names, loaded with `datasets`
    (blocking: call it in a thread). A Hub that cannot be reached is a 400 naming the source."""
    parsed = urlparse(uri)
    repo = parsed.path.strip("/")
    if parsed.netloc != "datasets" or not repo:
        raise InvalidRequestError(
            f"{FIELD}: a Hugging Face source is huggingface://datasets/<owner>/<name>"
            f"?split=<split>; got {uri!r}",
            param=FIELD,
        )
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = sorted(set(query) - set(HF_PARAMETERS))
    if unknown:
        raise InvalidRequestError(
            f"{FIELD}: unknown parameter(s) {', '.join(unknown)} in {uri!r}; "
            f"a Hugging Face source takes {', '.join(HF_PARAMETERS)}",
            param=FIELD,
        )
    query.setdefault("split", "train")
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError:
        raise InvalidRequestError(
            f"{FIELD}: reading {uri!r} needs the `datasets` package on the server", param=FIELD
        ) from None
    try:
        return datasets.load_dataset(repo, **query)
    except Exception as exc:  # offline, unknown repo or split, refused: all the source's fault
        raise InvalidRequestError(
            f"{FIELD}: {uri!r} cannot be read: the Hugging Face Hub cannot be reached from this "
            f"server or has no such dataset and split ({type(exc).__name__}: {exc}); upload the "
            "rows instead (a `file` or `rows` source)",
            param=FIELD,
        ) from None


def huggingface_rows(loaded: Any) -> Iterator[RowOrProblem]:
    for number, row in enumerate(loaded, start=1):
        yield number, row if isinstance(row, dict) else f"expected an object, got {row!r}"
