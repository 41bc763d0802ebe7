"""The official openai SDK's `client.files` calls, unchanged, against the real server."""

from __future__ import annotations

import hashlib

import openai
import pytest

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
    assert f"no file {created.id!r}" in caught.value.message


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
