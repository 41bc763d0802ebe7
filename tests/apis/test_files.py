from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import pytest

from llama_post.apis.files import UploadFileRequest
from llama_post.errors import NotFoundError
from llama_post.schema import UploadedFile
from tests.support import Driver


def upload(
    api: Driver, content: bytes, name: str = "data.jsonl", purpose: str = "fine-tune"
) -> dict[str, Any]:
    result = api.call("files", "upload_file", body={"purpose": purpose}, upload=(name, content))
    assert result.status == 200, result.body
    body: dict[str, Any] = result.body
    return body


def test_upload_retrieve_content_delete(api: Driver) -> None:
    content = f'{{"prompt": "{uuid.uuid4()}", "completion": "b"}}\n'.encode()
    created = upload(api, content)
    assert created["object"] == "file"
    assert created["bytes"] == len(content)
    assert created["filename"] == "data.jsonl"
    assert created["purpose"] == "fine-tune"
    assert created["sha256"] == hashlib.sha256(content).hexdigest()

    got = api.call("files", "retrieve_file", created["id"])
    assert got.status == 200 and got.body == created
    assert api.call("files", "retrieve_file_content", created["id"]).body == content

    deleted = api.call("files", "delete_file", created["id"])
    assert deleted.body == {"id": created["id"], "object": "file", "deleted": True}
    assert api.call("files", "retrieve_file", created["id"]).status == 404
    assert api.call("files", "retrieve_file_content", created["id"]).status == 404


def test_list_pages_with_after_and_limit(api: Driver) -> None:
    ids = [upload(api, b"x", name=f"f{i}.txt", purpose="batch")["id"] for i in range(5)]
    first = api.call("files", "list_files", body={"limit": 2, "purpose": "batch"}).body
    assert first["object"] == "list"
    assert [f["id"] for f in first["data"]] == ids[::-1][:2]  # newest first
    assert first["has_more"] is True
    assert first["first_id"] == ids[4] and first["last_id"] == ids[3]

    seen = [f["id"] for f in first["data"]]
    after = first["last_id"]
    while True:
        page = api.call(
            "files", "list_files", body={"limit": 2, "after": after, "purpose": "batch"}
        ).body
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen[:5] == ids[::-1]

    ascending = api.call("files", "list_files", body={"order": "asc", "purpose": "batch"}).body
    assert [f["id"] for f in ascending["data"]][-5:] == ids


def test_directory_parts_of_filenames_are_dropped(api: Driver) -> None:
    created = upload(api, b"x", name="../../etc/passwd")
    assert created["filename"] == "passwd"


def test_bad_input(api: Driver) -> None:
    bad_purpose = api.call("files", "upload_file", body={"purpose": "nonsense"}, upload=("a", b"x"))
    assert bad_purpose.status == 422
    assert bad_purpose.error["param"] == "purpose"

    no_file = api.call("files", "upload_file", body={"purpose": "fine-tune"})
    assert no_file.status == 422
    assert no_file.error["param"] == "file"

    for file_id in ["file-doesnotexist", "../files.db", "file-000000000000000000000000"]:
        missing = api.call("files", "retrieve_file", file_id)
        assert missing.status == 404, file_id
        assert missing.error["type"] == "not_found_error"

    assert api.call("files", "list_files", body={"limit": 0}).error["param"] == "limit"
    assert api.call("files", "list_files", body={"after": "file-nope"}).status == 404


def test_empty_file_is_accepted(api: Driver) -> None:
    created = upload(api, b"", name="empty.jsonl")
    assert created["bytes"] == 0
    assert api.call("files", "retrieve_file_content", created["id"]).body == b""


def test_a_download_started_before_a_delete_is_whole(tmp_path: Path) -> None:
    """The blob is opened when the download starts, so deleting the file meanwhile (another
    client) cannot cut the stream short."""
    from providers.inline.files.localfs.config import LocalFilesConfig
    from providers.inline.files.localfs.files import LocalFiles

    async def scenario() -> bytes:
        files = LocalFiles(LocalFilesConfig(storage_dir=tmp_path))
        content = b"x" * 300_000
        made = await files.upload_file(
            UploadFileRequest(
                file=UploadedFile(filename="a.jsonl", file=io.BytesIO(content)), purpose="batch"
            )
        )
        download = await files.retrieve_file_content(made.id)
        await files.delete_file(made.id)
        got = await download.read()
        with pytest.raises(NotFoundError):
            await files.retrieve_file_content(made.id)
        files.db.close()
        return got

    assert asyncio.run(scenario()) == b"x" * 300_000
