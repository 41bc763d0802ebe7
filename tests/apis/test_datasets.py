from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.apis.test_files import upload
from tests.support import Driver, Result

INSTRUCT = [{"prompt": f"What is {i}+{i}?", "completion": str(2 * i)} for i in range(25)]
DIALOG = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
]
PREFERENCE = [
    {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."},
    {
        "messages": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": "no",
    },
]


def new_id() -> str:
    return f"ds-{uuid.uuid4().hex[:12]}"


def register(api: Driver, purpose: str, source: dict[str, Any], **extra: Any) -> Result:
    return api.call(
        "datasets",
        "register_dataset",
        body={"purpose": purpose, "source": source, "dataset_id": new_id(), **extra},
    )


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def all_rows(api: Driver, dataset_id: str, limit: int = 10) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    start: int | None = 0
    while start is not None:
        page = api.call(
            "datasets", "iterrows", dataset_id, body={"start_index": start, "limit": limit}
        )
        assert page.status == 200, page.body
        rows += page.body["data"]
        assert page.body["has_more"] == (page.body["next_start_index"] is not None)
        start = page.body["next_start_index"]
    return rows


def test_register_inline_rows_get_list_iterate_unregister(api: Driver) -> None:
    created = register(
        api, "instruct", {"type": "rows", "rows": INSTRUCT}, metadata={"owner": "tests"}
    )
    assert created.status == 200, created.body
    ds = created.body
    assert ds["row_count"] == 25 and ds["purpose"] == "instruct"
    assert ds["metadata"] == {"owner": "tests"} and ds["source"]["type"] == "rows"
    assert api.call("datasets", "get_dataset", ds["identifier"]).body == ds
    listed = api.call("datasets", "list_datasets").body["data"]
    assert ds["identifier"] in [d["identifier"] for d in listed]

    assert all_rows(api, ds["identifier"], limit=7) == INSTRUCT
    tail = api.call("datasets", "iterrows", ds["identifier"], body={"start_index": 24}).body
    assert tail == {"data": [INSTRUCT[24]], "has_more": False, "next_start_index": None}
    beyond = api.call("datasets", "iterrows", ds["identifier"], body={"start_index": 99}).body
    assert beyond["data"] == [] and beyond["has_more"] is False

    gone = api.call("datasets", "unregister_dataset", ds["identifier"])
    assert gone.body == {"identifier": ds["identifier"], "deleted": True}
    assert api.call("datasets", "get_dataset", ds["identifier"]).status == 404
    assert api.call("datasets", "iterrows", ds["identifier"]).status == 404


@pytest.mark.parametrize("purpose, rows", [("dialog", DIALOG), ("preference", PREFERENCE)])
def test_each_purpose_keeps_its_rows(api: Driver, purpose: str, rows: list[dict[str, Any]]) -> None:
    ds = register(api, purpose, {"type": "rows", "rows": rows}).body
    assert all_rows(api, ds["identifier"]) == rows


def test_llama_stack_purpose_name_is_accepted(api: Driver) -> None:
    ds = register(api, "post-training/messages", {"type": "rows", "rows": DIALOG}).body
    assert ds["purpose"] == "post-training/messages"  # as registered, as Llama Stack answers


def test_every_file_format_from_an_upload(api: Driver) -> None:
    csv_text = "prompt,completion\n" + "".join(
        f'"{r["prompt"]}",{r["completion"]}\n' for r in INSTRUCT
    )
    contents = {
        "rows.jsonl": jsonl(INSTRUCT),
        "rows.json": json.dumps(INSTRUCT).encode(),
        "rows.csv": csv_text.encode(),
        "rows.parquet": parquet(pa.Table.from_pylist(INSTRUCT)),
    }
    for name, content in contents.items():
        file_id = upload(api, content, name=name)["id"]
        created = register(api, "instruct", {"type": "file", "file_id": file_id})
        assert created.status == 200, (name, created.body)
        assert created.body["source"]["format"] == name.split(".")[1]
        assert all_rows(api, created.body["identifier"], limit=100) == INSTRUCT, name


def test_csv_and_parquet_carry_messages(api: Driver) -> None:
    messages = DIALOG[0]["messages"]
    csv_text = 'messages\n"' + json.dumps(messages).replace('"', '""') + '"\n'
    file_id = upload(api, csv_text.encode(), name="dialog.csv")["id"]
    ds = register(api, "dialog", {"type": "file", "file_id": file_id}).body
    assert all_rows(api, ds["identifier"]) == DIALOG

    file_id = upload(api, parquet(pa.Table.from_pylist(DIALOG)), name="dialog.parquet")["id"]
    ds = register(api, "dialog", {"type": "file", "file_id": file_id}).body
    assert all_rows(api, ds["identifier"]) == DIALOG


def test_local_path_and_file_uri_under_allowed_dir(api: Driver, import_dir: Path) -> None:
    name = f"{uuid.uuid4().hex}.jsonl"
    (import_dir / name).write_bytes(jsonl(INSTRUCT[:3]))
    for uri in [str(import_dir / name), f"file://{import_dir / name}", name]:
        created = register(api, "instruct", {"type": "uri", "uri": uri})
        assert created.status == 200, (uri, created.body)
        assert all_rows(api, created.body["identifier"]) == INSTRUCT[:3]


def test_paths_outside_the_allowed_dirs_are_refused(
    api: Driver, import_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(jsonl(INSTRUCT[:1]))
    link = import_dir / f"{uuid.uuid4().hex}.jsonl"
    link.symlink_to(secret)
    for uri in [
        str(secret),
        f"file://{secret}",
        f"../{secret.name}",
        "../../../../etc/passwd",
        str(link),
        "/etc/passwd",
    ]:
        refused = register(api, "instruct", {"type": "uri", "uri": uri, "format": "jsonl"})
        assert refused.status == 404, uri
        assert refused.error["param"] == "source.uri"
        assert "outside" in refused.error["message"]
    http = register(api, "instruct", {"type": "uri", "uri": "https://example.com/x.jsonl"})
    assert http.status == 400 and "file://" in http.error["message"]


def test_bad_rows_are_all_reported_with_row_and_field(api: Driver) -> None:
    rows: list[Any] = [
        *INSTRUCT[:3],
        {"prompt": "x"},
        INSTRUCT[4],
        {"prompt": 1, "completion": "y"},
        {"completion": "z"},
    ]
    refused = register(api, "instruct", {"type": "rows", "rows": rows})
    assert refused.status == 400
    details = refused.error["details"]
    assert {(d["row"], d["field"]) for d in details} == {
        (4, "completion"),
        (6, "prompt"),
        (7, "prompt"),
    }
    assert "3 of 7 rows are invalid" in refused.error["message"]
    assert "row 4 field completion" in refused.error["message"]


def test_reported_bad_rows_are_capped(api: Driver) -> None:
    refused = register(api, "instruct", {"type": "rows", "rows": [{"x": i} for i in range(100)]})
    assert "100 of 100 rows are invalid" in refused.error["message"]
    assert len({d["row"] for d in refused.error["details"]}) == 20


def test_dialog_and_preference_rules(api: Driver) -> None:
    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    bad_role = {"messages": [{"role": "wizard", "content": "hi"}]}
    refused = register(api, "dialog", {"type": "rows", "rows": [no_assistant, bad_role]})
    assert refused.status == 400
    assert "assistant" in refused.error["details"][0]["message"]
    assert refused.error["details"][1]["field"] == "messages[0].role"

    both = {
        "prompt": "p",
        "messages": [{"role": "user", "content": "u"}],
        "chosen": "a",
        "rejected": "b",
    }
    refused = register(api, "preference", {"type": "rows", "rows": [both]})
    assert "exactly one of prompt or messages" in refused.error["message"]


def test_file_level_problems(api: Driver) -> None:
    cases: dict[str, tuple[bytes, str]] = {
        "latin1.jsonl": (
            '{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"),
            "row 1: not valid UTF-8",
        ),
        "latin1.csv": ("prompt,completion\ncaf\xe9,x\n".encode("latin-1"), "not valid UTF-8"),
        "empty.jsonl": (b"", "no rows"),
        "empty.csv": (b"", "no rows"),
        "blank.jsonl": (b"\n\n", "no rows"),
        "missing.csv": (b"prompt,answer\nhi,there\n", "missing column(s) completion"),
        "not.parquet": (b"PAR1 not really", "not a readable Parquet file"),
        "broken.json": (b"[{", "not valid JSON"),
        "object.json": (b'{"prompt": "x"}', "array of row objects"),
        "rows.txt": (jsonl(INSTRUCT), "cannot tell the format"),
        "garbage.jsonl": (b"not json\n[1]\n", "row 1: not valid JSON"),
        "deep.jsonl": (deep_row(100_000), "row 1: nested deeper than 64 levels"),
        "deeper.jsonl": (deep_row(70), "row 1: nested deeper than 64 levels"),
        "deep.json": (b"[" + deep_row(100_000) + b"]", "the file is nested deeper than 64"),
        "deep.csv": (
            b'prompt,completion,messages\nx,y,"' + b"[" * 100_000 + b"]" * 100_000 + b'"\n',
            "messages: nested deeper than 64 levels",
        ),
    }
    for name, (content, expected) in cases.items():
        file_id = upload(api, content, name=name)["id"]
        refused = register(api, "instruct", {"type": "file", "file_id": file_id})
        assert refused.status == 400, (name, refused.body)
        assert expected in refused.error["message"], (name, refused.error["message"])


def deep_row(levels: int) -> bytes:
    return b'{"prompt": ' + b"[" * levels + b"]" * levels + b', "completion": "x"}\n'


def test_deeply_nested_requests_are_refused_by_name(api: Driver) -> None:
    value: Any = "x"
    for _ in range(100):
        value = {"a": value}
    refused = register(api, "instruct", {"type": "rows", "rows": [{"prompt": value}]})
    assert refused.status == 400, refused.body
    assert refused.error["param"] == "source.rows[0].prompt", refused.error
    assert "nests deeper than 64 levels" in refused.error["message"]
    assert api.call("datasets", "list_datasets").status == 200


def test_parquet_with_the_wrong_schema(api: Driver) -> None:
    wrong_type = pa.table({"prompt": [1, 2], "completion": ["a", "b"]})
    file_id = upload(api, parquet(wrong_type), name="wrong.parquet")["id"]
    refused = register(api, "instruct", {"type": "file", "file_id": file_id})
    assert refused.status == 400
    assert "prompt is int64" in refused.error["message"]

    missing = pa.table({"question": ["a"], "answer": ["b"]})
    file_id = upload(api, parquet(missing), name="missing.parquet")["id"]
    refused = register(api, "instruct", {"type": "file", "file_id": file_id})
    assert "missing column(s) prompt, completion" in refused.error["message"]
    assert "question: string" in refused.error["message"]


def test_a_ten_megabyte_row_is_refused(api: Driver) -> None:
    huge = {"prompt": "x" * (10 << 20), "completion": "y"}
    file_id = upload(api, jsonl([INSTRUCT[0], huge, INSTRUCT[1]]), name="huge.jsonl")["id"]
    refused = register(api, "instruct", {"type": "file", "file_id": file_id})
    assert refused.status == 400
    assert refused.error["details"][0]["row"] == 2
    assert "over the 1048576-byte limit" in refused.error["message"]

    inline = register(api, "instruct", {"type": "rows", "rows": [huge]})
    assert inline.status == 400 and "over the 1048576-byte limit" in inline.error["message"]

    file_id = upload(api, json.dumps([huge]).encode(), name="huge.json")["id"]
    refused = register(api, "instruct", {"type": "file", "file_id": file_id})
    assert refused.status == 400 and refused.error["details"][0]["row"] == 1


def test_append_rows_validates_all_or_nothing(api: Driver) -> None:
    ds = register(api, "instruct", {"type": "rows", "rows": INSTRUCT[:2]}).body
    added = api.call("datasets", "append_rows", ds["identifier"], body={"rows": INSTRUCT[2:5]})
    assert added.body == {"identifier": ds["identifier"], "appended": 3, "row_count": 5}

    refused = api.call(
        "datasets",
        "append_rows",
        ds["identifier"],
        body={"rows": [INSTRUCT[5], {"prompt": "only"}]},
    )
    assert refused.status == 400 and refused.error["details"][0]["row"] == 2
    assert all_rows(api, ds["identifier"]) == INSTRUCT[:5]
    assert api.call("datasets", "get_dataset", ds["identifier"]).body["row_count"] == 5

    assert api.call("datasets", "append_rows", ds["identifier"], body={"rows": []}).status == 422
    assert api.call("datasets", "append_rows", "nope", body={"rows": INSTRUCT[:1]}).status == 404


def test_llama_stack_client_0_7_forms(api: Driver) -> None:
    """0.7 sends the dataset id in the append body too, and `limit=-1` for every row."""
    ds = register(api, "instruct", {"type": "rows", "rows": INSTRUCT[:2]}).body
    same = {"dataset_id": ds["identifier"], "rows": INSTRUCT[2:4]}
    assert api.call("datasets", "append_rows", ds["identifier"], body=same).status == 200
    other = api.call(
        "datasets", "append_rows", ds["identifier"], body={**same, "dataset_id": "other"}
    )
    assert other.status == 404 and other.error["param"] == "dataset_id"  # names no dataset

    every = api.call("datasets", "iterrows", ds["identifier"], body={"start_index": 1, "limit": -1})
    assert every.body["data"] == INSTRUCT[1:4] and not every.body["has_more"]
    zero = api.call("datasets", "iterrows", ds["identifier"], body={"limit": 0})
    assert zero.status == 422 and zero.error["param"] == "limit"


def test_ids_are_checked(api: Driver) -> None:
    ds_id = new_id()
    source = {"type": "rows", "rows": INSTRUCT[:1]}
    body = {"purpose": "instruct", "source": source, "dataset_id": ds_id}
    assert api.call("datasets", "register_dataset", body=body).status == 200
    taken = api.call("datasets", "register_dataset", body=body)
    assert taken.status == 409 and taken.error["param"] == "dataset_id"
    for bad in ["../escape", "/abs", "a/b", ".hidden", ""]:
        refused = api.call("datasets", "register_dataset", body={**body, "dataset_id": bad})
        assert refused.status == 422, bad
        assert refused.error["param"] == "dataset_id"
    missing_file = register(api, "instruct", {"type": "file", "file_id": "file-nope"})
    assert missing_file.status == 404 and missing_file.error["param"] == "source.file_id"


def test_schema_errors_name_the_field(api: Driver) -> None:
    refused = api.call(
        "datasets",
        "register_dataset",
        body={
            "purpose": "instruct",
            "source": {"type": "rows", "rows": INSTRUCT},
            "extra_field": 1,
        },
    )
    assert refused.status == 422 and refused.error["param"] == "extra_field"
    refused = api.call(
        "datasets",
        "register_dataset",
        body={"purpose": "chat", "source": {"type": "rows", "rows": INSTRUCT}},
    )
    assert refused.error["param"] == "purpose"
    refused = api.call("datasets", "iterrows", "x", body={"limit": -1})
    assert refused.status in (404, 422)
