"""Checkpoint archives: a checkpoint folder as one tar that moves between servers.

Packing writes the tar.gz once, beside the checkpoint (`.step-000004.tar.gz`), hashing it as it
is written, with its sha256 and size in `.step-000004.tar.gz.sha256`; a checkpoint never changes
once it is complete, so later downloads stream that file with its digest in the headers. Nothing
is held in memory: tarfile writes in stream mode (`w|`) into gzip at level 1 (weights hardly
compress; the level only costs time) into a hashing writer.

Unpacking reads a tar (plain or compressed, `r|*`) member by member into a staging folder and
refuses, naming the member, an absolute path, a `..`, a link of any kind or a device; then the
folder must be a checkpoint (an `adapter_config.json` or a `config.json`), and an adapter must fit
its base (layers and widths, read from the safetensors header, no tensor loaded). Only then is the
staging folder renamed into place: a refused archive leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import secrets
import shutil
import struct
import tarfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from llama_post.errors import InvalidRequestError

MEDIA_TYPE = "application/gzip"
SHA256_HEADER = "x-llama-post-sha256"
CHUNK = 1 << 20
MAX_MEMBERS = 100_000


class _Hashing:
    """A file writer that hashes and counts what goes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def archive_paths(folder: Path) -> tuple[Path, Path]:
    """Where a checkpoint's archive and its digest are kept: beside it, hidden."""
    archive = folder.parent / f".{folder.name}.tar.gz"
    return archive, archive.with_name(f"{archive.name}.sha256")


def packed(folder: Path, name: str) -> tuple[Path, str, int]:
    """The checkpoint's archive (written now if it is not yet), its sha256 and its size. Its
    members are `<name>/...`: regular files and folders only, links left out."""
    target, digest_file = archive_paths(folder)
    if target.is_file() and digest_file.is_file():
        sha256, size = digest_file.read_text().split()
        return target, sha256, int(size)
    tag = secrets.token_hex(4)
    partial = target.with_name(f"{target.name}.{tag}.partial")
    try:
        with partial.open("wb") as raw:
            out = _Hashing(raw)
            with (
                gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as packed_,
                tarfile.open(fileobj=packed_, mode="w|") as tar,
            ):
                for path in [folder, *sorted(folder.rglob("*"))]:
                    if path.is_symlink() or not (path.is_file() or path.is_dir()):
                        continue
                    inside = PurePosixPath(name, path.relative_to(folder)).as_posix()
                    tar.add(path, arcname=inside, recursive=False)
        digest_partial = digest_file.with_name(f"{digest_file.name}.{tag}.partial")
        digest_partial.write_text(f"{out.digest.hexdigest()} {out.size}\n")
        partial.replace(target)
        digest_partial.replace(digest_file)  # last: an archive without it is rewritten
    finally:
        partial.unlink(missing_ok=True)
    return target, out.digest.hexdigest(), out.size


async def read_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes, a chunk at a time, read in a thread."""
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


def forget(folder: Path) -> None:
    """Remove a checkpoint's archive (with the checkpoint)."""
    for path in archive_paths(folder):
        path.unlink(missing_ok=True)


def unpack(archive: IO[bytes], target: Path, max_bytes: int | None = None) -> None:
    """Extract a checkpoint archive into `target` (which must not exist), checking every member.
    One top folder holding everything is taken as the checkpoint itself."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        _extract(archive, staging, max_bytes)
        entries = list(staging.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        checkpoint_kind(root)
        if target.exists():
            raise InvalidRequestError(f"{target.name} is imported already", param="model_id")
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(archive: IO[bytes], staging: Path, max_bytes: int | None) -> None:
    total = 0
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for count, member in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise _bad(f"it has more than {MAX_MEMBERS} members")
                path = staging.joinpath(*_checked_parts(member))
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                try:
                    out = path.open("xb")
                except FileExistsError:
                    raise _bad(f"member {member.name!r} appears twice") from None
                with out:
                    while chunk := source.read(CHUNK):
                        total += len(chunk)
                        if max_bytes is not None and total > max_bytes:
                            raise _bad(f"it unpacks to more than {max_bytes} bytes")
                        out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _bad(f"it is not a readable tar archive ({exc})") from None


def _checked_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "special"
        raise _bad(f"member {name!r} is {kind}; only files and folders are accepted")
    if "\x00" in name or "\\" in name or not name.strip("/"):
        raise _bad(f"member {name!r} has a name that is not a plain path")
    pure = PurePosixPath(name)
    if pure.is_absolute():
        raise _bad(f"member {name!r} is an absolute path")
    parts = tuple(p for p in pure.parts if p != ".")
    if ".." in parts:
        raise _bad(f"member {name!r} climbs out with '..'")
    return parts


def _bad(why: str) -> InvalidRequestError:
    return InvalidRequestError(f"the archive was refused: {why}", param="source")


def checkpoint_kind(folder: Path) -> Literal["adapter", "full"]:
    """An adapter (its `adapter_config.json`) or a full model (`config.json`); anything else is
    no checkpoint."""
    if (folder / "adapter_config.json").is_file():
        if not (folder / "adapter_model.safetensors").is_file():
            raise _bad("it has adapter_config.json but no adapter_model.safetensors")
        return "adapter"
    if (folder / "config.json").is_file():
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise _bad("it has config.json but no weights (*.safetensors)")
        return "full"
    raise _bad("it is not a checkpoint: it holds neither adapter_config.json nor config.json")


def check_adapter_fits(folder: Path, base_config: dict[str, Any], base: str) -> None:
    """Refuse an adapter whose tensors cannot sit on `base`: a layer it does not have, or a
    width none of its projections has (read from the safetensors header alone)."""
    layers = int(base_config.get("num_hidden_layers", 0))
    hidden = int(base_config.get("hidden_size", 0))
    heads = int(base_config.get("num_attention_heads", 1))
    head_dim = int(base_config.get("head_dim") or hidden // max(heads, 1))
    kv_heads = int(base_config.get("num_key_value_heads") or heads)
    widths = {hidden, int(base_config.get("intermediate_size", 0)), heads * head_dim}
    widths.add(kv_heads * head_dim)
    for name, shape in _tensor_shapes(folder / "adapter_model.safetensors").items():
        parts = name.split(".")
        if "layers" in parts:
            index = parts[parts.index("layers") + 1]
            if index.isdigit() and int(index) >= layers:
                raise _mismatch(base, f"{name} is for layer {index}; it has {layers} layers")
        if "lora_A" in parts and len(shape) == 2 and shape[1] not in widths:
            raise _mismatch(base, f"{name} reads {shape[1]} features; its widths are {widths}")
        if "lora_B" in parts and len(shape) == 2 and shape[0] not in widths:
            raise _mismatch(base, f"{name} writes {shape[0]} features; its widths are {widths}")


def _mismatch(base: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"the archive's adapter does not fit base model {base!r}: {why}",
        param="source.base_model",
    )


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise _bad(f"{path.name} is not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > 100 << 20:
            raise _bad(f"{path.name} is not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise _bad(f"{path.name} is not a safetensors file") from None
    if not isinstance(header, dict):
        raise _bad(f"{path.name} is not a safetensors file")
    return {
        name: list(entry.get("shape", []))
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    }


def remove_quietly(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
