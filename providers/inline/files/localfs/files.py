"""Files on the local disk: content under `storage_dir/blobs`, metadata in SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import PurePosixPath, PureWindowsPath
from typing import BinaryIO

from llama_post.apis.files import (
    DeleteFileResponse,
    FileObject,
    FilePurpose,
    ListFilesRequest,
    ListFilesResponse,
    UploadFileRequest,
)
from llama_post.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from llama_post.schema import FileContent
from llama_post.storage import Database, check_id
from providers.inline.files.localfs.config import LocalFilesConfig

CHUNK = 1 << 20
FILE_ID = re.compile(r"file-[0-9a-f]{24}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
"""


class LocalFiles:
    def __init__(self, config: LocalFilesConfig) -> None:
        self.config = config
        self.blobs = config.storage_dir / "blobs"
        self.tmp = config.storage_dir / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():  # uploads cut off by a crash
            leftover.unlink()
        self.db = Database(config.storage_dir / "files.db", SCHEMA)
        if "expires_at" not in {r["name"] for r in self.db.all("PRAGMA table_info(files)")}:
            self.db.execute("ALTER TABLE files ADD COLUMN expires_at INTEGER")  # older files.db

    async def upload_file(self, request: UploadFileRequest) -> FileObject:
        filename = _display_name(request.file.filename)
        file_id = f"file-{secrets.token_hex(12)}"
        size, digest = await asyncio.to_thread(self._store, request.file.file, file_id)
        created = int(time.time())
        expiry = request.expires_after
        expires = created + expiry.seconds if expiry is not None else None
        self.db.execute(
            "INSERT INTO files (id, filename, purpose, bytes, sha256, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (file_id, filename, request.purpose.value, size, digest, created, expires),
        )
        return FileObject(
            id=file_id,
            bytes=size,
            created_at=created,
            filename=filename,
            purpose=request.purpose,
            sha256=digest,
            expires_at=expires,
        )

    def _store(self, source: BinaryIO, file_id: str) -> tuple[int, str]:
        """Copy the upload chunk by chunk to a temporary file, then move it into place."""
        limit = self.config.max_upload_bytes
        partial = self.tmp / file_id
        digest = hashlib.sha256()
        size = 0
        try:
            with partial.open("wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(
                            f"file is over the {limit}-byte upload limit (max_upload_bytes)",
                            param="file",
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(self.blobs / file_id)
        finally:
            partial.unlink(missing_ok=True)
        return size, digest.hexdigest()

    def _expire(self) -> None:
        """Delete the files past their `expires_at`: an expired file is gone for every call."""
        now = int(time.time())
        expired = self.db.all("SELECT id FROM files WHERE expires_at <= ?", (now,))
        for row in expired:
            self.db.execute("DELETE FROM files WHERE id = ?", (row["id"],))
            (self.blobs / row["id"]).unlink(missing_ok=True)

    async def list_files(self, request: ListFilesRequest) -> ListFilesResponse:
        self._expire()
        where, params = [], []
        if request.purpose is not None:
            where.append("purpose = ?")
            params.append(request.purpose.value)
        if request.after is not None:
            cursor = self.db.one("SELECT seq FROM files WHERE id = ?", (request.after,))
            if cursor is None:
                raise NotFoundError(f"after: no file {request.after!r}", param="after")
            where.append("seq < ?" if request.order == "desc" else "seq > ?")
            params.append(cursor["seq"])
        sql = "SELECT * FROM files"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {request.order.upper()} LIMIT ?"
        rows = self.db.all(sql, [*params, request.limit + 1])
        files = [_to_object(row) for row in rows[: request.limit]]
        return ListFilesResponse(
            data=files,
            has_more=len(rows) > request.limit,
            first_id=files[0].id if files else None,
            last_id=files[-1].id if files else None,
        )

    async def retrieve_file(self, file_id: str) -> FileObject:
        check_id(file_id, FILE_ID, "file")
        self._expire()
        row = self.db.one("SELECT * FROM files WHERE id = ?", (file_id,))
        if row is None:
            raise NotFoundError(f"file {file_id!r} not found", param="file_id")
        return _to_object(row)

    async def retrieve_file_content(self, file_id: str) -> FileContent:
        meta = await self.retrieve_file(file_id)
        try:  # opened now: a delete while the download streams no longer cuts it short
            handle = (self.blobs / file_id).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"file {file_id!r} not found", param="file_id") from None
        return FileContent(chunks=_read_chunks(handle), filename=meta.filename, size=meta.bytes)

    async def delete_file(self, file_id: str) -> DeleteFileResponse:
        await self.retrieve_file(file_id)
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        (self.blobs / file_id).unlink(missing_ok=True)
        return DeleteFileResponse(id=file_id, deleted=True)

    async def shutdown(self) -> None:
        self.db.close()


async def _read_chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    with handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


def _display_name(name: str) -> str:
    """The name a client gave, without any directory part; it is metadata, never a path."""
    base = PureWindowsPath(PurePosixPath(name).name).name.strip()
    if not base:
        raise InvalidRequestError("file: the upload has no filename", param="file")
    return base[:255]


def _to_object(row: object) -> FileObject:
    r = dict(row)  # type: ignore[call-overload]
    return FileObject(
        id=r["id"],
        bytes=r["bytes"],
        created_at=r["created_at"],
        filename=r["filename"],
        purpose=FilePurpose(r["purpose"]),
        sha256=r["sha256"],
        expires_at=r["expires_at"],
    )
