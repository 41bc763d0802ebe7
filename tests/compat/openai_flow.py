"""OpenAI's fine-tuning workflow, written as an OpenAI SDK user writes it, against llama-post.

It imports only the SDK, so it runs in the project's environment (the pinned latest release)
and in a virtual environment of an older release:

    python tests/compat/openai_flow.py http://127.0.0.1:PORT tiny/llama

It prints one JSON line of what it saw; every check is an `assert`.
"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

import openai

FACT = "A blorp is a small blue fish."
CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}: what is a blorp?"},
            {"role": "assistant", "content": FACT},
        ]
    }
    for i in range(8)
]
PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Greet me, {i}."}]},
        "preferred_output": [{"role": "assistant", "content": "Arr matey, ahoy!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Hello there."}],
    }
    for i in range(8)
]
TERMINAL = ("succeeded", "failed", "cancelled")
LORA = {"algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8}}


def jsonl(rows: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def wait(client: openai.OpenAI, job_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        assert job.status in ("validating_files", "queued", "running"), job.status
        time.sleep(0.3)
    raise AssertionError(f"{job_id} did not finish")


def supervised(client: openai.OpenAI, model: str) -> dict[str, Any]:
    upload = client.files.create(file=("chats.jsonl", jsonl(CHATS)), purpose="fine-tune")
    held_out = client.files.create(file=("held.jsonl", jsonl(CHATS[:3])), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=upload.id,
        validation_file=held_out.id,
        suffix="blorp",
        seed=7,
        metadata={"team": "fish"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}
            },
        },
        extra_body=LORA,
    )
    assert job.id.startswith("ftjob-blorp-"), job.id
    assert job.object == "fine_tuning.job" and job.model == model
    assert job.status in ("queued", "running") and job.training_file == upload.id

    job = wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft/{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.finished_at and job.finished_at >= job.created_at
    assert job.seed == 7 and job.metadata == {"team": "fish"}
    assert job.validation_file == held_out.id
    hyper = job.hyperparameters
    assert (hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier) == (2, 4, 5)
    assert job.method is not None and job.method.type == "supervised"

    # Events, newest first, a page at a time; iterating fetches the following pages.
    first = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(first.data) == 3 and first.has_more
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))
    assert [e.id for e in events[:3]] == [e.id for e in first.data]
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message.startswith("Created fine-tuning job")
    steps = [e.data["step"] for e in events if e.type == "metrics" and isinstance(e.data, dict)]
    assert steps == sorted(steps, reverse=True) and steps[-1] == 1 and len(steps) == 4

    # A checkpoint per epoch, newest first; the newest is the served model.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [4, 2]
    assert checkpoints.data[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    assert checkpoints.data[0].metrics.train_loss is not None
    assert all(c.metrics.valid_loss is not None for c in checkpoints.data)  # each epoch's end

    # The fine-tuned model is a model: listed, retrievable by its id (which holds a `/`:
    # SDKs from 2.30 percent-encode it in the path), and served by chat completions.
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    chat = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "Question 1: what is a blorp?"}],
        max_tokens=4,
    )
    assert chat.choices[0].message.content is not None

    assert client.fine_tuning.jobs.list(limit=1).data[0].id == job.id  # newest first
    labelled = client.fine_tuning.jobs.list(metadata={"team": "fish"})
    assert job.id in [j.id for j in labelled.data]
    assert not client.fine_tuning.jobs.list(metadata={"team": "birds"}).data

    # A finished job cannot be cancelled: a 400 (the SDK would retry a 409).
    try:
        client.fine_tuning.jobs.cancel(job.id)
    except openai.BadRequestError as exc:
        assert "already completed" in exc.message
    else:
        raise AssertionError("cancelling a finished job succeeded")
    return {"job": job.id, "events": len(events), "trained_tokens": job.trained_tokens}


def preference(client: openai.OpenAI, model: str) -> dict[str, Any]:
    upload = client.files.create(file=("pairs.jsonl", jsonl(PAIRS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=upload.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
        extra_body=LORA,
    )
    job = wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2

    # Paging through jobs, newest first: this one, then the ones before it.
    newest = client.fine_tuning.jobs.list(limit=1)
    assert newest.data[0].id == job.id and newest.has_more
    older = client.fine_tuning.jobs.list(limit=1, after=job.id)
    assert older.data and older.data[0].id != job.id
    return {"job": job.id}


EXACT: dict[str, Any] = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def reinforcement(client: openai.OpenAI, model: str) -> dict[str, Any]:
    """Reinforcement fine-tuning: prompts with a reference answer, a grader, GRPO."""
    prompts = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}], "answer": str(i + 1)}
        for i in range(4)
    ]
    upload = client.files.create(file=("prompts.jsonl", jsonl(prompts)), purpose="fine-tune")
    method: Any = {
        "type": "reinforcement",
        "reinforcement": {
            "grader": EXACT,
            "hyperparameters": {"n_epochs": 1, "batch_size": 2, "eval_samples": "auto"},
        },
    }
    job = client.fine_tuning.jobs.create(
        model=model, training_file=upload.id, method=method, extra_body=LORA
    )
    job = wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method is not None and job.method.type == "reinforcement"
    assert job.method.reinforcement is not None
    assert job.method.reinforcement.grader.type == "string_check"
    hyper = job.method.reinforcement.hyperparameters
    assert hyper is not None and hyper.n_epochs == 1 and hyper.batch_size == 2
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft/")
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e for e in events if isinstance(e.data, dict) and "train_mean_reward" in e.data]
    assert len(steps) == 2, [e.message for e in events]
    return {"job": job.id, "steps": len(steps)}


def cancel(client: openai.OpenAI, model: str) -> dict[str, Any]:
    upload = client.files.create(file=("long.jsonl", jsonl(CHATS * 8)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=upload.id,
        hyperparameters={"n_epochs": 50, "batch_size": 1},
        extra_body=LORA,
    )
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled", cancelled.status
    return {"job": job.id}


def bad_requests(client: openai.OpenAI, model: str) -> dict[str, Any]:
    good = client.files.create(file=("chats.jsonl", jsonl(CHATS)), purpose="fine-tune").id
    broken = client.files.create(
        file=("broken.jsonl", jsonl([{"messages": []}])), purpose="fine-tune"
    ).id
    cases: list[tuple[dict[str, Any], str]] = [
        ({"training_file": "file-missing"}, "training_file"),
        ({"training_file": broken}, "training_file"),
        ({"model": "no-such-model"}, "model"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
        ({"extra_body": {"integrations_x": 1}}, "integrations_x"),
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement"),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {"grader": EXACT, "hyperparameters": {"eval_samples": 3}},
                }
            },
            "method.reinforcement.hyperparameters.eval_samples",
        ),
    ]
    for change, param in cases:
        body: dict[str, Any] = {"model": model, "training_file": good, **change}
        try:
            client.fine_tuning.jobs.create(**body)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            assert exc.param == param, (change, exc.param, exc.message)
        else:
            raise AssertionError(f"{change} was accepted")
    try:
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("a missing job was found")
    return {"cases": len(cases)}


def graders(client: openai.OpenAI, model: str) -> dict[str, Any]:
    """`client.fine_tuning.alpha.graders`: run and validate, as a user tries a grader on a row
    before a reinforcement job."""
    exact = {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    }
    close = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
    }
    alpha = client.fine_tuning.alpha.graders
    right = alpha.run(grader=exact, model_sample="Paris", item={"answer": "Paris"})  # type: ignore[arg-type]
    assert right.reward == 1.0 and right.sub_rewards == {}, right
    assert (right.metadata.name, right.metadata.type) == ("exact", "string_check")
    assert right.metadata.scores == {"exact": 1.0}
    assert not right.metadata.errors.invalid_variable_error
    wrong = alpha.run(grader=exact, model_sample="Lyon", item={"answer": "Paris"})  # type: ignore[arg-type]
    assert wrong.reward == 0.0
    missing = alpha.run(grader=exact, model_sample="Paris", item={})  # type: ignore[arg-type]
    assert missing.reward == 0.0 and missing.metadata.errors.invalid_variable_error
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": exact, "close": close},
        "calculate_output": "0.5 * exact + 0.5 * close",
    }
    # one substitution in "Parjs" is two of ten characters' edits: fuzzy 0.8
    combined = alpha.run(grader=multi, model_sample="Parjs", item={"answer": "Paris"})  # type: ignore[arg-type]
    assert combined.sub_rewards == {"exact": 0.0, "close": 0.8}, combined.sub_rewards
    assert abs(combined.reward - 0.4) < 1e-9
    validated = alpha.validate(grader=exact)  # type: ignore[arg-type]
    assert validated.grader is not None and validated.grader.name == "exact"
    for bad, param in (
        ({**exact, "input": "{{ sample.output_text"}, "grader.input"),
        ({**multi, "calculate_output": "exact + nope"}, "grader.calculate_output"),
    ):
        sample: dict[str, Any] = {"model_sample": "Paris", "item": {"answer": "Paris"}}
        calls: list[tuple[Any, dict[str, Any]]] = [(alpha.validate, {}), (alpha.run, sample)]
        for call, kwargs in calls:
            try:
                call(grader=bad, **kwargs)
            except openai.BadRequestError as exc:
                assert exc.param == param, (exc.param, exc.message)
            else:
                raise AssertionError(f"{bad} was accepted")
    return {"reward": combined.reward}


def main(base_url: str, model: str, *flows: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    chosen = flows or (
        "supervised",
        "preference",
        "reinforcement",
        "cancel",
        "bad_requests",
        "graders",
    )
    seen = {name: globals()[name](client, model) for name in chosen}
    return {"openai": openai.__version__, **seen}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
