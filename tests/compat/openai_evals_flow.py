"""OpenAI's Evals API as an SDK user writes it, against llama-post: an eval (a custom item
schema and testing criteria), runs over inline rows and over an uploaded file, their result
counts, per-criterion results and output items, cancel, paging and the refusals by field.

It imports only the SDK, so it runs in the project's environment and in an older release's:

    python tests/compat/openai_evals_flow.py http://127.0.0.1:PORT tiny/llama

It prints one JSON line of what it saw; every check is an `assert`.
"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

import openai

ITEM_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
CLOSE = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.99,
}
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
TERMINAL = ("completed", "failed", "canceled")


def wait_run(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in TERMINAL:
            return run
        assert run.status in ("queued", "in_progress"), run.status
        time.sleep(0.1)
    raise AssertionError(f"{run_id} did not finish")


def create_eval(client: openai.OpenAI, name: str) -> Any:
    return client.evals.create(
        name=name,
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=[EXACT, CLOSE],  # type: ignore[list-item]
        metadata={"team": "fish"},
    )


def run_over(
    client: openai.OpenAI, eval_id: str, model: str, items: list[dict[str, Any]], **extra: Any
) -> Any:
    made = client.evals.runs.create(
        eval_id,
        name="held-out",
        data_source={
            "type": "completions",
            "model": model,
            "input_messages": TEMPLATE,
            "sampling_params": {"max_completion_tokens": 6, "temperature": 0},
            "source": {"type": "file_content", "content": [{"item": i} for i in items]},
            **extra,
        },  # type: ignore[arg-type]
    )
    return wait_run(client, eval_id, made.id)


def evals(client: openai.OpenAI, model: str) -> dict[str, Any]:
    questions = [f"Evals question {i}?" for i in range(4)]
    alone = []
    for q in questions:
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": q}], max_tokens=6, temperature=0
        )
        alone.append(chat.choices[0].message.content or "")
    # two rows expect what the model answers; two something it never says
    items = [
        {"question": q, "answer": alone[i] if i < 2 else "zebra-zebra"}
        for i, q in enumerate(questions)
    ]
    made = create_eval(client, "colours")
    assert made.id.startswith("eval_") and made.object == "eval" and made.name == "colours"
    assert made.data_source_config.type == "custom"
    assert made.data_source_config.schema_["properties"]["item"] == ITEM_SCHEMA
    assert [c.name for c in made.testing_criteria] == ["exact", "close"]
    assert client.evals.retrieve(made.id).metadata == {"team": "fish"}
    assert client.evals.update(made.id, name="renamed").name == "renamed"
    assert made.id in [e.id for e in client.evals.list(limit=100).data]

    run = run_over(client, made.id, model, items)
    assert run.object == "eval.run" and run.status == "completed" and run.model == model
    counts = run.result_counts
    assert (counts.total, counts.passed, counts.failed, counts.errored) == (4, 2, 2, 0), counts
    per = {r.testing_criteria: (r.passed, r.failed) for r in run.per_testing_criteria_results}
    assert per == {"exact": (2, 2), "close": (2, 2)}, per
    assert run.per_model_usage and run.per_model_usage[0].invocation_count == 4

    output = client.evals.runs.output_items.list(run.id, eval_id=made.id, limit=100)
    assert [o.datasource_item_id for o in output.data] == [0, 1, 2, 3]
    for i, item in enumerate(output.data):
        assert item.object == "eval.run.output_item" and item.datasource_item == items[i]
        assert item.sample.output[0].content == alone[i]  # decoded together, answered alone
        assert item.sample.input[0].content == questions[i]
        assert item.status == ("pass" if i < 2 else "fail")
        scores = {r.name: r.score for r in item.results}
        assert scores["exact"] == (1.0 if i < 2 else 0.0)
    one = client.evals.runs.output_items.retrieve(output.data[3].id, eval_id=made.id, run_id=run.id)
    assert one.datasource_item_id == 3
    failing = client.evals.runs.output_items.list(run.id, eval_id=made.id, status="fail")
    assert [o.datasource_item_id for o in failing.data] == [2, 3]
    paged = list(client.evals.runs.output_items.list(run.id, eval_id=made.id, limit=3))
    assert [o.datasource_item_id for o in paged] == [0, 1, 2, 3]  # the SDK fetched page two

    # the same rows from an uploaded JSONL file
    lines = "".join(json.dumps({"item": i}) + "\n" for i in items).encode()
    upload = client.files.create(file=("items.jsonl", io.BytesIO(lines)), purpose="evals")
    again = client.evals.runs.create(
        made.id,
        data_source={  # type: ignore[misc,arg-type]
            "type": "completions",
            "model": model,
            "input_messages": TEMPLATE,
            "sampling_params": {"max_completion_tokens": 6, "temperature": 0},
            "source": {"type": "file_id", "id": upload.id},
        },
    )
    again = wait_run(client, made.id, again.id)
    assert again.result_counts.passed == 2, again.result_counts
    runs = client.evals.runs.list(made.id)
    assert [r.id for r in runs.data] == [run.id, again.id]

    bad_requests(client, made.id, model, items)
    return {
        "eval": made.id,
        "passed": counts.passed,
        "per_criteria": {k: list(v) for k, v in per.items()},
    }


def bad_requests(
    client: openai.OpenAI, eval_id: str, model: str, items: list[dict[str, Any]]
) -> None:
    def refused(param: str, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except openai.BadRequestError as exc:
            assert exc.param == param, (exc.param, exc.message)
        else:
            raise AssertionError(f"accepted; expected a 400 naming {param}")

    bad_item = [{"question": "No answer?"}]
    source = {"type": "file_content", "content": [{"item": i} for i in bad_item]}
    data_source = {"type": "completions", "model": model, "source": source}
    refused("data_source.source", client.evals.runs.create, eval_id, data_source=data_source)
    refused(
        "testing_criteria[1].name",
        client.evals.create,
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=[EXACT, EXACT],
    )
    refused(
        "testing_criteria[0].input",
        client.evals.create,
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=[{**EXACT, "input": "{{ sample.output_text"}],
    )
    refused(
        "data_source_config.type",
        client.evals.create,
        data_source_config={"type": "logs"},
        testing_criteria=[EXACT],
    )
    # a long run, cancelled
    many = [{"question": f"Tell a long story {i}.", "answer": "x"} for i in range(40)]
    long = client.evals.runs.create(
        eval_id,
        data_source={  # type: ignore[misc,arg-type]
            "type": "completions",
            "model": model,
            "input_messages": TEMPLATE,
            "sampling_params": {"max_completion_tokens": 64},
            "source": {"type": "file_content", "content": [{"item": i} for i in many]},
        },
    )
    cancelled = client.evals.runs.cancel(long.id, eval_id=eval_id)
    assert cancelled.status == "canceled", cancelled.status
    assert cancelled.result_counts.total == 40
    deleted = client.evals.delete(eval_id)
    assert deleted.deleted and deleted.eval_id == eval_id
    try:
        client.evals.retrieve(eval_id)
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("a deleted eval was found")


def main(base_url: str, model: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    return {"openai": openai.__version__, **evals(client, model)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
