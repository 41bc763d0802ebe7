"""Llama Stack's dataset purposes, row shapes and sources: rows kept as given at registration,
read at job creation in the shape the job's `data_format` names, over HTTP and the library."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from llama_post.apis.datasets.shapes import preference_rows, sft_rows
from tests.apis.test_datasets import all_rows, register
from tests.apis.test_dpo import dpo_request
from tests.apis.test_dpo import start as start_dpo
from tests.apis.test_post_training import dataset, request
from tests.support import Driver

SIMPLEQA = [
    {
        "input_query": f"What is {i} plus {i}?",
        "expected_answer": str(2 * i),
        "chat_completion_input": json.dumps(
            [{"role": "user", "content": f"What is {i} plus {i}?"}]
        ),
    }
    for i in range(8)
]
TRL_PAIRS = [
    {
        "prompt": f"Question {i}: what is a blorp?",
        "chosen": [
            {"role": "user", "content": f"Question {i}: what is a blorp?"},
            {"role": "assistant", "content": "A small blue fish."},
        ],
        "rejected": [
            {"role": "user", "content": f"Question {i}: what is a blorp?"},
            {"role": "assistant", "content": "I do not know."},
        ],
    }
    for i in range(8)
]


def test_llama_stacks_purposes_keep_any_rows(api: Driver) -> None:
    for purpose in ("post-training/messages", "eval/question-answer", "eval/messages-answer"):
        made = register(api, purpose, {"type": "rows", "rows": SIMPLEQA})
        assert made.status == 200, made.body
        assert made.body["purpose"] == purpose  # as registered, as Llama Stack answers
        assert all_rows(api, made.body["identifier"]) == SIMPLEQA
    refused = register(api, "post-training/messages", {"type": "rows", "rows": [{"a": 1}, [1]]})
    assert refused.status == 422, refused.body  # a row must still be a JSON object
    ours = register(api, "dialog", {"type": "rows", "rows": SIMPLEQA})
    assert ours.status == 400, ours.body
    assert ours.error["details"][0]["row"] == 1 and ours.error["details"][0]["field"] == "messages"


def test_data_uris_are_sources(api: Driver) -> None:
    csv_text = "input_query,expected_answer\nWhat is 1 plus 1?,2\nWhat is 2 plus 2?,4\n"
    as_csv = f"data:text/csv;base64,{base64.b64encode(csv_text.encode()).decode()}"
    made = register(api, "eval/question-answer", {"type": "uri", "uri": as_csv})
    assert made.status == 200, made.body
    assert made.body["source"]["format"] == "csv"
    assert all_rows(api, made.body["identifier"])[1] == {
        "input_query": "What is 2 plus 2?",
        "expected_answer": "4",
    }
    lines = "".join(json.dumps(r) + "\n" for r in SIMPLEQA[:3])
    as_jsonl = f"data:application/jsonl,{quote(lines)}"
    made = register(api, "post-training/messages", {"type": "uri", "uri": as_jsonl})
    assert made.status == 200, made.body
    assert all_rows(api, made.body["identifier"]) == SIMPLEQA[:3]
    for uri, says in [
        ("data:image/png;base64,AAAA", "media type 'image/png'"),
        ("data:text/csv;base64,***", "base64"),
        ("huggingface://datasets/llamastack/simpleqa?split=train", "cannot be read"),
        ("huggingface://datasets/x/y?trust_remote_code=true", "trust_remote_code"),
    ]:
        refused = register(api, "eval/question-answer", {"type": "uri", "uri": uri})
        assert refused.status == 400, (uri, refused.body)
        assert refused.error["param"] == "source.uri" and says in refused.error["message"], uri


def test_sft_reads_simpleqa_rows_as_instruct(api: Driver) -> None:
    ds = dataset(api, SIMPLEQA, purpose="post-training/messages")
    body = request(ds, **{"training_config.data_config.data_format": "instruct"})
    report = api.call("post_training", "preflight", body=body)
    assert report.status == 200, report.body
    assert report.body["rows"] == 6 and report.body["errors"] == []  # 8, less the validation
    assert "user\nWhat is" in report.body["example"]

    bad = [*SIMPLEQA[:2], {**SIMPLEQA[2], "chat_completion_input": "[{"}]
    refused = api.call(
        "post_training",
        "preflight",
        body=request(
            dataset(api, bad, purpose="eval/messages-answer"),
            **{"training_config.data_config.data_format": "instruct"},
        ),
    )
    assert refused.status == 400, refused.body
    assert refused.error["param"] == "training_config.data_config.dataset_id"
    assert "row 3 field chat_completion_input: not valid JSON" in refused.error["message"]
    as_dialog = api.call(
        "post_training",
        "preflight",
        body=request(ds, **{"training_config.data_config.data_format": "dialog"}),
    )
    assert as_dialog.status == 400 and "Llama Stack's `dialog`" in as_dialog.error["message"]


def test_torchtune_module_names_are_the_models_own(api: Driver) -> None:
    ds = dataset(api)
    names = ["q_proj", "k_proj", "v_proj", "output_proj"]
    report = api.call(
        "post_training",
        "preflight",
        body=request(ds, **{"algorithm_config.lora_attn_modules": names}),
    )
    assert report.status == 200, report.body
    unknown = api.call(
        "post_training",
        "preflight",
        body=request(ds, **{"algorithm_config.lora_attn_modules": ["q_proj", "attn_proj"]}),
    )
    assert unknown.status == 400 and unknown.error["param"] == "algorithm_config.lora_attn_modules"
    assert "'attn_proj'" in unknown.error["message"]


def test_dpo_on_a_llama_stack_purpose_checks_rows_at_creation(api: Driver) -> None:
    bad: list[dict[str, Any]] = [*TRL_PAIRS[:3], {"prompt": "hi", "chosen": 3, "rejected": "no"}]
    ds = dataset(api, bad, purpose="post-training/messages")
    refused = start_dpo(
        api, dpo_request(ds, **{"training_config.data_config.data_format": "dialog"})
    )
    assert refused.status == 400, refused.body
    assert "row 4 field chosen" in refused.error["message"]
    assert refused.error["details"][0]["row"] == 4


def test_rows_read_in_the_shape_of_the_format() -> None:
    rows, fmt = sft_rows(SIMPLEQA[:1], "instruct", "p")
    assert fmt == "instruct" and rows == [{"prompt": "What is 0 plus 0?", "completion": "0"}]
    dialog = [
        {
            "dialog": json.dumps(
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
            )
        }
    ]
    rows, fmt = sft_rows(dialog, None, "p")
    assert fmt == "dialog" and rows[0]["messages"][1] == {"role": "assistant", "content": "b"}
    pair: dict[str, Any] = preference_rows(TRL_PAIRS[:1], "p")[0]
    assert pair == {  # the turns both answers share are the prompt
        "messages": [{"role": "user", "content": "Question 0: what is a blorp?"}],
        "chosen": [{"role": "assistant", "content": "A small blue fish."}],
        "rejected": [{"role": "assistant", "content": "I do not know."}],
    }
