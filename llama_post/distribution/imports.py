"""Models registered from a checkpoint archive (`ArchiveSource`): fetched, checked, unpacked.

The archive comes from the Files API (`file_id`, read through the caller's guarded Files, so
another owner's file is not found) or from a URL (a remote llama-post's signed archive URL), only
under one of run.yaml's `archive_url_prefixes`, matched and fetched as a parsed, normalised URL
(`url_prefixes`), so a caller cannot make the server fetch what it likes. It is streamed into a
spooled temporary file beside its destination while its sha256 is computed (so a 2 GB archive is
on disk, never in memory), compared with the digest the request names and the one the URL's
server sent, then unpacked member by member (`llama_post.archives`). What is unpacked is the
model's folder under the stack's imported models folder, which the inference provider must be
allowed to read (its `model_dirs`); it goes with the model when it is unregistered, and nothing
stays when any step fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import httpx

from llama_post import archives
from llama_post.apis.files import Files
from llama_post.apis.models import AdapterSource, ArchiveSource, HuggingFaceSource, Model
from llama_post.distribution.url_prefixes import UrlPrefix, locate
from llama_post.errors import InvalidRequestError, UpstreamError, UpstreamUnavailableError

SPOOL_BYTES = 16 << 20  # an archive bigger than this is spooled to disk
MAX_ARCHIVE_BYTES = 64 << 30
FETCH_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class ArchiveImports:
    """Unpacks archives into `folder/<model id>`. `files` is set by the stack once Files is up."""

    def __init__(self, folder: Path, url_prefixes: list[str]) -> None:
        self.folder = folder
        self.url_prefixes = [UrlPrefix.parse(p) for p in url_prefixes]
        self.files: Files | None = None

    def owns(self, path: str) -> bool:
        return Path(path).resolve().is_relative_to(self.folder.resolve())

    async def unpack(
        self, model_id: str, source: ArchiveSource, base: Model | None
    ) -> AdapterSource | HuggingFaceSource:
        """The folder the archive holds, unpacked and checked, as the source to register."""
        if (source.file_id is None) == (source.url is None):
            raise InvalidRequestError(
                "source: give exactly one of file_id (an uploaded archive) and url",
                param="source.file_id",
            )
        url = self._allowed(source.url) if source.url is not None else None
        target = self.folder / model_id
        if target.exists():
            raise InvalidRequestError(
                f"model_id: an archive is already imported as {model_id!r}", param="model_id"
            )
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            sent = await self._fetch(source, url, spool)
            digest = hashlib.sha256()
            await asyncio.to_thread(_hash, spool, digest)
            for expected, named in ((source.sha256, "source.sha256"), (sent, "the server's")):
                if expected is not None and expected != digest.hexdigest():
                    raise InvalidRequestError(
                        f"source: the archive's sha256 is {digest.hexdigest()}, not {expected} "
                        f"({named})",
                        param="source.sha256",
                    )
            spool.seek(0)
            try:
                await asyncio.to_thread(archives.unpack, spool, target, MAX_ARCHIVE_BYTES)
            except BaseException:
                self.prune(target)
                raise
        try:
            return await asyncio.to_thread(_source, target, source, base)
        except BaseException:
            await self.remove(target)
            raise

    def _allowed(self, url: str) -> httpx.URL:
        """The URL to fetch for `url`, normalised, when it is under one of the prefixes."""
        try:
            location, fetched = locate(url)
            if any(location.under(p.location) for p in self.url_prefixes):
                return fetched
            why = ""
        except ValueError as exc:
            why = f" ({exc})"
        allowed = ", ".join(p.text for p in self.url_prefixes)
        raise InvalidRequestError(
            f"source.url: this server fetches archives only from URLs under "
            f"{allowed or 'none: run.yaml lists no archive_url_prefixes'}{why}; upload the "
            "archive through /v1/files and give its file_id",
            param="source.url",
        )

    async def remove(self, folder: Path) -> None:
        """Remove an imported model's folder, and the folders its id made that are now empty."""
        await asyncio.to_thread(archives.remove_quietly, folder)
        self.prune(folder)

    def prune(self, folder: Path) -> None:
        parent = folder.parent
        while parent != self.folder and parent.is_relative_to(self.folder):
            try:
                parent.rmdir()
            except OSError:  # not empty (another model's), or gone
                return
            parent = parent.parent

    async def _fetch(
        self, source: ArchiveSource, url: httpx.URL | None, out: IO[bytes]
    ) -> str | None:
        """Write the archive to `out` (from `source.file_id`, or `url`, the source's URL
        normalised); the sha256 its server announced, if any."""
        if source.file_id is not None:
            if self.files is None:
                raise InvalidRequestError(
                    "source.file_id: this distribution serves no Files API", param="source.file_id"
                )
            content = await self.files.retrieve_file_content(source.file_id)
            await _copy(content.chunks, out)
            return content.sha256
        assert url is not None
        try:
            async with (
                httpx.AsyncClient(timeout=FETCH_TIMEOUT) as http,
                http.stream("GET", url) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    kind = InvalidRequestError if response.status_code < 500 else UpstreamError
                    raise kind(
                        f"source.url: {source.url} answered {response.status_code}: "
                        f"{response.text[:300]}",
                        param="source.url",
                    )
                await _copy(response.aiter_bytes(archives.CHUNK), out)
                sent: str | None = response.headers.get(archives.SHA256_HEADER)
                return sent
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"source.url: could not read {source.url} ({type(exc).__name__}: {exc})"
            ) from None


async def _copy(chunks: AsyncIterator[bytes], out: IO[bytes]) -> None:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_ARCHIVE_BYTES:
            raise InvalidRequestError(
                f"source: the archive is larger than {MAX_ARCHIVE_BYTES} bytes", param="source"
            )
        out.write(chunk)


def _hash(spool: IO[bytes], digest: Any) -> None:
    spool.seek(0)
    while chunk := spool.read(archives.CHUNK):
        digest.update(chunk)


def _source(
    target: Path, source: ArchiveSource, base: Model | None
) -> AdapterSource | HuggingFaceSource:
    kind = archives.checkpoint_kind(target)
    if kind == "full":
        if base is not None:
            raise InvalidRequestError(
                "source.base_model: the archive holds a full model (config.json), not an "
                "adapter; leave base_model out",
                param="source.base_model",
            )
        return HuggingFaceSource(type="huggingface", path=str(target))
    if base is None:
        raise InvalidRequestError(
            "source.base_model: the archive holds an adapter (adapter_config.json); name the "
            "registered base model it was trained on",
            param="source.base_model",
        )
    if base.weights is not None:  # where this server can read the base, check the fit
        config = json.loads((Path(base.weights.path) / "config.json").read_text())
        archives.check_adapter_fits(target, config, base.id)
    return AdapterSource(type="adapter", path=str(target), base_model=base.id)
