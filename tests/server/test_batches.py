"""OpenAI's Batch API through the real openai SDK, on a real server with the tiny model: every
line answered as the same request sent alone, bad lines in the error file by line number, the
lines decoded together, paging, cancel, expiry, limits, owners, and a SIGKILL mid-batch that
redoes no line."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.test_auth import _key
from tests.support import TINY, Server, distribution

CHAT: Final = "/v1/chat/completions"
TOKENS = "llama_post_inference_generated_tokens_total"
BATCH_SIZE = "llama_post_inference_batch_size"
Connect = Callable[..., openai.OpenAI]


def _chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    request = {
        "model": TINY,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 8,
        **body,
    }
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request}


def _jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def _client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def _submit(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT) -> Any:
    made = client.files.create(file=("batch.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=made.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"purpose": "test"},
    )


def _wait(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.1)
    raise AssertionError(client.batches.retrieve(batch_id))


def _records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = client.files.content(file_id).read()
    return [json.loads(line) for line in content.splitlines()]


def _scrape(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def _shared_steps(url: str) -> float:
    """Decode steps that carried more than one sequence: from the engine's histogram of its
    forward passes, all steps less those of one sequence."""
    labels = {"model": TINY, "phase": "decode"}
    steps = _scrape(url, f"{BATCH_SIZE}_count", **labels)
    return steps - _scrape(url, f"{BATCH_SIZE}_bucket", le="1.0", **labels)


@pytest.fixture
def connect() -> Iterator[Connect]:
    """`connect(server, key)`: an SDK client, closed when the test ends."""
    made: list[openai.OpenAI] = []

    def connect(server: Server, key: str = "unused") -> openai.OpenAI:
        made.append(_client(server, key))
        return made[-1]

    yield connect
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("batches")
    batches = {"max_concurrent_lines": 8, "max_input_lines": 100, "max_input_bytes": 65536}
    srv = Server(distribution(home, tiny_model, batches=batches), home).start(timeout=120)
    yield srv
    srv.stop()


def test_every_line_is_answered_as_the_same_request_alone(server: Server, connect: Connect) -> None:
    client = connect(server)
    good = [_chat_line(f"q{i}", f"Tell me about number {i}.") for i in range(16)]
    lines: list[Any] = [
        *good[:3],
        b"{not json",  # line 4
        _chat_line("q0", "A custom_id used twice."),  # line 5
        *good[3:10],
        _chat_line("hot", "Too hot.", temperature=5),  # line 13
        _chat_line("nobody", "An unknown model.", model="no/such-model"),  # line 14
        b"",  # a blank line is no request
        *good[10:],
    ]
    shared = _shared_steps(server.url)
    batch = _submit(client, lines)
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert batch.completion_window == "24h" and batch.metadata == {"purpose": "test"}
    batch = _wait(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 20, "completed": 16, "failed": 4}
    assert batch.completed_at and batch.in_progress_at and batch.finalizing_at
    assert batch.expires_at == batch.created_at + 86400
    # The engine's own record of its forward passes: some decode step carried several lines.
    assert _shared_steps(server.url) > shared, "the lines were decoded one at a time"

    output = {r["custom_id"]: r for r in _records(client, batch.output_file_id)}
    assert sorted(output) == sorted(line["custom_id"] for line in good)
    for line in good:
        alone = client.chat.completions.create(**line["body"])
        record = output[line["custom_id"]]
        assert record["error"] is None and record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == alone.choices[0].message.content
        assert alone.usage is not None
        assert body["usage"] == alone.usage.model_dump(exclude_none=True)

    errors = {r["error"]["line"]: r for r in _records(client, batch.error_file_id)}
    assert sorted(errors) == [4, 5, 13, 14]
    assert errors[4]["custom_id"] is None and "not valid JSON" in errors[4]["error"]["message"]
    assert errors[5]["custom_id"] == "q0" and "line 1" in errors[5]["error"]["message"]
    assert errors[13]["error"]["param"] == "body.temperature"
    assert errors[14]["response"]["status_code"] == 404
    assert errors[14]["custom_id"] == "nobody" and errors[14]["error"]["code"] == "not_found_error"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_a_completions_batch(server: Server, connect: Connect) -> None:
    client = connect(server)
    bodies: list[dict[str, Any]] = [
        {"model": TINY, "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    ]
    bodies.append({**bodies[0], "prompt": "Another"})
    lines: list[dict[str, Any]] = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions", "body": body}
        for i, body in enumerate(bodies)
    ]
    wrong_url = _chat_line("chat", "Not this endpoint.")
    batch = _wait(client, _submit(client, [*lines, wrong_url], "/v1/completions").id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    output = {r["custom_id"]: r["response"]["body"] for r in _records(client, batch.output_file_id)}
    for line in lines:
        alone = client.completions.create(**line["body"])
        assert output[line["custom_id"]]["choices"][0]["text"] == alone.choices[0].text
    (error,) = _records(client, batch.error_file_id)
    assert error["error"]["line"] == 3 and error["error"]["param"] == "url"


def test_what_is_refused_at_creation(server: Server, connect: Connect) -> None:
    client = connect(server)
    made = client.files.create(file=("b.jsonl", _jsonl([_chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=made.id,
            endpoint=CHAT,
            completion_window="1h",  # type: ignore[arg-type]
        )
    assert caught.value.param == "completion_window" and "24h" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=made.id, endpoint="/v1/embeddings", completion_window="24h"
        )  # an endpoint of OpenAI's that no batch here calls
    assert caught.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError) as not_found:
        client.batches.create(
            input_file_id="file-" + "0" * 24, endpoint=CHAT, completion_window="24h"
        )
    assert not_found.value.param == "input_file_id"
    tuning = client.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=tuning.id, endpoint=CHAT, completion_window="24h")
    assert caught.value.param == "input_file_id" and "purpose" in caught.value.message

    empty = client.files.create(file=("empty.jsonl", b"\n\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=empty.id, endpoint=CHAT, completion_window="24h")
    assert caught.value.param == "input_file_id" and "no request" in caught.value.message

    # over the server's limits (65536 bytes, 100 lines here): 413
    big = client.files.create(file=("big.jsonl", b" " * 70000 + b"\n"), purpose="batch")
    many = client.files.create(file=("many.jsonl", b"{}\n" * 101), purpose="batch")
    for file_id, limit in ((big.id, "max_input_bytes"), (many.id, "max_input_lines")):
        with pytest.raises(openai.APIStatusError) as too_large:
            client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        assert too_large.value.status_code == 413 and limit in too_large.value.message


def test_paging_and_cancel(server: Server, connect: Connect) -> None:
    client = connect(server)
    made = [_submit(client, [_chat_line("one", "Short.", max_tokens=1)]).id for _ in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2)][:3] == made[::-1]  # the SDK pages on

    slow = [_chat_line(f"s{i}", f"Go on {i}.", max_tokens=200, ignore_eos=True) for i in range(60)]
    batch = _submit(client, slow)
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 2:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    cancelled = _wait(client, batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at, cancelled
    counts = cancelled.request_counts
    assert counts is not None and 2 <= counts.completed < 60 and counts.failed == 0
    assert len(_records(client, cancelled.output_file_id)) == counts.completed  # what ran
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 24)


def test_a_batch_not_done_in_its_window_expires(
    tmp_path: Path, tiny_model: Path, connect: Connect
) -> None:
    batches = {"max_concurrent_lines": 1, "window_seconds": 1}
    srv = Server(distribution(tmp_path, tiny_model, batches=batches), tmp_path).start(120)
    try:
        client = connect(srv)
        lines = [_chat_line(f"e{i}", "Go.", max_tokens=200, ignore_eos=True) for i in range(30)]
        batch = _wait(client, _submit(client, lines).id)
    finally:
        srv.stop()
    assert batch.status == "expired" and batch.expired_at, batch
    counts = batch.request_counts
    assert counts is not None and counts.total == 30 and counts.completed + counts.failed == 30
    assert counts.failed > 0


def test_a_killed_server_finishes_its_batch_without_redoing_lines(
    tmp_path: Path, tiny_model: Path, connect: Connect
) -> None:
    config = distribution(
        tmp_path,
        tiny_model,
        batches={"max_concurrent_lines": 2},
        inference={"torch_threads": 1},  # a core left for the server while the batch resumes
    )
    lines = [_chat_line(f"k{i}", f"Line {i}.", max_tokens=24, ignore_eos=True) for i in range(40)]
    server = Server(config, tmp_path).start(timeout=120)
    client = connect(server)
    batch = _submit(client, lines)
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 6:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    written = tmp_path / "stack" / "batches" / batch.id / "output.jsonl"
    ran = len(written.read_bytes().splitlines())
    assert 6 <= ran < 40

    again = Server(config, tmp_path).start(timeout=120)
    try:
        client = connect(again)
        done = _wait(client, batch.id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert done.request_counts.model_dump() == {"total": 40, "completed": 40, "failed": 0}
        records = _records(client, done.output_file_id)
        assert sorted(r["custom_id"] for r in records) == sorted(f"k{i}" for i in range(40))
        # the restarted server decoded only the lines without a result: 24 tokens each
        assert _scrape(again.url, TOKENS, model=TINY) == (40 - ran) * 24
    finally:
        again.stop()


def test_another_owner_cannot_see_a_batch(
    tmp_path: Path, tiny_model: Path, connect: Connect
) -> None:
    server = Server(distribution(tmp_path, tiny_model) | {"auth": {"enabled": True}}, tmp_path)
    alice, bob = _key(server.config, "alice"), _key(server.config, "bob")
    server.start(timeout=120)
    try:
        as_alice, as_bob = connect(server, alice), connect(server, bob)
        batch = _submit(as_alice, [_chat_line("a", "Mine.")])
        with pytest.raises(openai.NotFoundError):
            as_bob.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            as_bob.batches.cancel(batch.id)
        assert batch.id not in [b.id for b in as_bob.batches.list()]
        # nor use alice's file for a batch of his own
        with pytest.raises(openai.NotFoundError):
            as_bob.batches.create(
                input_file_id=batch.input_file_id, endpoint=CHAT, completion_window="24h"
            )
        done = _wait(as_alice, batch.id)
        assert done.status == "completed" and batch.id in [b.id for b in as_alice.batches.list()]
        # the results are alice's files
        assert len(_records(as_alice, done.output_file_id)) == 1
        with pytest.raises(openai.NotFoundError):
            as_bob.files.retrieve(str(done.output_file_id))
    finally:
        server.stop()
