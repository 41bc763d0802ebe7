"""The official openai SDK's `client.files` calls, unchanged, against the real server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path

import openai
import pytest

from llama_post.apis.files import FilePurpose, ListFilesRequest, UploadFileRequest
from llama_post.apis.files.models import ExpiresAfter
from llama_post.errors import NotFoundError
from llama_post.schema import UploadedFile
from providers.inline.files.localfs.config import LocalFilesConfig
from providers.inline.files.localfs.files import LocalFiles
from tests.support import Server


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_files_through_the_openai_sdk(client: openai.OpenAI) -> None:
    content = b'{"prompt": "a", "completion": "b"}\n'
    created = client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert created.id.startswith("file-") and created.bytes == len(content)
    assert created.filename == "train.jsonl" and created.purpose == "fine-tune"
    assert created.model_extra == {"sha256": hashlib.sha256(content).hexdigest()}

    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == content
    ids = [f.id for f in client.files.list(purpose="fine-tune")]
    assert created.id in ids

    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.retrieve(created.id)
    assert f"file {created.id!r} not found" in caught.value.message


def test_the_sdk_pages_through_files(client: openai.OpenAI) -> None:
    made = [client.files.create(file=(f"{i}.jsonl", b"{}"), purpose="evals").id for i in range(5)]
    page = client.files.list(purpose="evals", limit=2)
    assert [f.id for f in page.data] == made[::-1][:2]
    assert page.has_more
    assert [f.id for f in page][:5] == made[::-1]  # iterating fetches the following pages


def test_sdk_errors_carry_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.files.create(file=("a.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
    assert caught.value.param == "purpose"


def test_files_expire(
    client: openai.OpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's `expires_after` (sent as `expires_after[anchor]` and `[seconds]` form fields),
    also under llama-stack-client 0.2's `/v1/openai/v1`; past `expires_at` a file is gone."""
    made = client.files.create(
        file=("x.jsonl", b"{}"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 4545},
    )
    assert made.expires_at == made.created_at + 4545
    assert client.files.retrieve(made.id).expires_at == made.expires_at
    old_path = openai.OpenAI(base_url=f"{client.base_url}openai/v1", api_key="unused")
    assert old_path.files.retrieve(made.id).id == made.id
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.files.create(
            file=("x.jsonl", b"{}"),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert caught.value.param == "expires_after.seconds"

    files = LocalFiles(LocalFilesConfig(storage_dir=tmp_path))  # the provider, its clock moved
    upload = UploadFileRequest(
        file=UploadedFile(filename="a.txt", file=io.BytesIO(b"a"), content_type="text/plain"),
        purpose=FilePurpose.batch,
        expires_after=ExpiresAfter(anchor="created_at", seconds=3600),
    )
    kept = asyncio.run(files.upload_file(upload))
    assert asyncio.run(files.retrieve_file(kept.id)).expires_at == kept.created_at + 3600
    monkeypatch.setattr(time, "time", lambda: kept.created_at + 3600.0)
    with pytest.raises(NotFoundError):
        asyncio.run(files.retrieve_file(kept.id))
    assert asyncio.run(files.list_files(ListFilesRequest())).data == []
    assert not list((tmp_path / "blobs").iterdir())
    asyncio.run(files.shutdown())
