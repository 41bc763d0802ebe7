"""The server and the library client give the same answers to the same calls."""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.support import HttpDriver, LibraryDriver, Result

ROWS = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]


def scenario(api: HttpDriver | LibraryDriver, tag: str) -> list[Result]:
    file = api.call(
        "files",
        "upload_file",
        body={"purpose": "fine-tune"},
        upload=("rows.jsonl", b"".join(b'{"prompt": "a", "completion": "b"}\n' for _ in range(3))),
    )
    ds_id = f"same-{tag}"
    return [
        file,
        api.call("files", "retrieve_file", file.body["id"]),
        api.call("files", "retrieve_file", "file-nope"),
        api.call("files", "list_files", body={"limit": 0}),
        api.call(
            "datasets",
            "register_dataset",
            body={
                "purpose": "instruct",
                "dataset_id": ds_id,
                "source": {"type": "file", "file_id": file.body["id"]},
            },
        ),
        api.call(
            "datasets",
            "register_dataset",
            body={
                "purpose": "instruct",
                "dataset_id": ds_id,
                "source": {"type": "rows", "rows": ROWS},
            },
        ),
        api.call("datasets", "append_rows", ds_id, body={"rows": ROWS}),
        api.call("datasets", "append_rows", ds_id, body={"rows": [{"prompt": 3}]}),
        api.call("datasets", "iterrows", ds_id, body={"start_index": 2, "limit": 4}),
        api.call("datasets", "iterrows", ds_id, body={"limit": 10**6}),
        api.call("datasets", "register_dataset", body={"purpose": "x", "source": {}}),
        api.call("datasets", "unregister_dataset", ds_id),
        api.call("datasets", "get_dataset", ds_id),
    ]


def normalized(results: list[Result], tag: str) -> list[Any]:
    text = repr([(r.status, r.body) for r in results]).replace(tag, "TAG")
    text = re.sub(r"file-[0-9a-f]{24}", "FILE", text)
    # an HTTP error names its request (x-request-id); a library call is no HTTP request
    text = re.sub(r"'request_id': (?:'[^']*'|None)", "'request_id': R", text)
    return [re.sub(r"'created_at': \d+", "'created_at': T", text)]


def test_http_and_library_agree(http_driver: HttpDriver, library: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    over_http = scenario(http_driver, tag)
    in_process = scenario(LibraryDriver(library), tag)
    assert [r.status for r in over_http] == [
        200,
        200,
        404,
        422,
        200,
        409,
        200,
        400,
        200,
        422,
        422,
        200,
        404,
    ]
    assert normalized(over_http, tag) == normalized(in_process, tag)
    assert all(r.body["error"]["request_id"] for r in over_http if r.status >= 400)
