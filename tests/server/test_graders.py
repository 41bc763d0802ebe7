"""The grader routes on a real server (auth on, python graders enabled, the tiny model served):
native and OpenAI's (through the openai SDK), invalid graders refused at both by field, a
sample's failure as 0 with OpenAI's error flags, the python sandbox's limits, and `score_model`
scoring with the served model, as its owner only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from llama_post.auth import KeyStore
from llama_post.graders.score_model import parse_score
from tests.compat import openai_flow
from tests.server.test_auth import Caller
from tests.support import TINY, Server, distribution, wait_for_job
from tests.tiny import build_tiny_adapter

RUN, VALIDATE = "/v1/post-training/graders/run", "/v1/post-training/graders/validate"
ALPHA_RUN, ALPHA_VALIDATE = (
    "/v1/fine_tuning/alpha/graders/run",
    "/v1/fine_tuning/alpha/graders/validate",
)
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
PYTHON = {"enabled": True, "cpu_seconds": 2, "memory_mb": 256, "timeout_s": 2}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, models_dir: Path
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("graders")
    config = distribution(home, tiny_model) | {
        "auth": {"enabled": True},
        "graders": {"python": PYTHON},
    }
    server = Server(config, home)
    store = KeyStore(home / "stack")  # the stack's storage_dir, as `llama-post keys create`
    keys = {owner: store.create(owner)[1] for owner in ("alice", "bob")}
    store.close()
    server.start(timeout=90)
    alice, bob = Caller(server.url, keys["alice"]), Caller(server.url, keys["bob"])
    adapter = build_tiny_adapter(models_dir / "judge-adapter", tiny_model, seed=11)
    registered = alice.post(
        "/v1/models",
        json={
            "model_id": "alice/judge",
            "source": {"type": "adapter", "path": str(adapter), "base_model": TINY},
        },
    )
    assert registered.status_code == 200, registered.text
    yield {"server": server, "keys": keys, "alice": alice, "bob": bob, "home": home}
    alice.http.close()
    bob.http.close()
    server.stop()


def test_a_grader_runs_on_one_row_at_both_routes(served: dict[str, Any]) -> None:
    alice: Caller = served["alice"]
    for route in (RUN, ALPHA_RUN):
        right = alice.post(
            route, json={"grader": EXACT, "model_sample": "Paris", "item": {"answer": "Paris"}}
        )
        assert right.status_code == 200, right.text
        body = right.json()
        assert (body["reward"], body["sub_rewards"]) == (1.0, {})
        assert body["metadata"]["scores"] == {"exact": 1.0}
        assert not any(v for v in body["metadata"]["errors"].values())
        wrong = alice.post(
            route, json={"grader": EXACT, "model_sample": "Lyon", "item": {"answer": "Paris"}}
        )
        assert wrong.json()["reward"] == 0.0
    # the sample is JSON too when it parses: `sample.output_json`
    shaped = {**EXACT, "input": "{{sample.output_json.city}}"}
    city = alice.post(
        RUN,
        json={"grader": shaped, "model_sample": '{"city": "Paris"}', "item": {"answer": "Paris"}},
    )
    assert city.json()["reward"] == 1.0
    validated = alice.post(ALPHA_VALIDATE, json={"grader": EXACT})
    assert validated.status_code == 200 and validated.json() == {"grader": EXACT}


def test_the_openai_sdk_runs_and_validates_graders(served: dict[str, Any]) -> None:
    client = openai.OpenAI(
        base_url=f"{served['server'].url}/v1", api_key=served["keys"]["alice"], max_retries=0
    )
    assert openai_flow.graders(client, TINY) == {"reward": 0.4}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input": "{{ sample.output_text"}, "grader.input"),
        (
            {"type": "regex", "pattern": "([a-z]", "reference": None, "operation": None},
            "grader.pattern",
        ),
        (
            {"type": "json_schema", "schema": {"type": 5}, "reference": None, "operation": None},
            "grader.schema",
        ),
        (
            {
                "type": "multi",
                "graders": {"e": EXACT},
                "calculate_output": "e +",
                "input": None,
                "reference": None,
                "operation": None,
            },
            "grader.calculate_output",
        ),
        (
            {
                "type": "score_model",
                "model": "no/such-model",
                "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
                "reference": None,
                "operation": None,
            },
            "grader.model",
        ),
    ],
)
def test_an_invalid_grader_is_a_400_naming_it_at_validate_and_run(
    served: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    alice: Caller = served["alice"]
    grader = {k: v for k, v in {**EXACT, **change}.items() if v is not None}
    for route in (VALIDATE, RUN, ALPHA_VALIDATE, ALPHA_RUN):
        body: dict[str, Any] = {"grader": grader}
        if route in (RUN, ALPHA_RUN):
            body |= {"model_sample": "x", "item": {"answer": "x"}}
        refused = alice.post(route, json=body)
        assert refused.status_code == 400, (route, refused.text)
        assert refused.json()["error"]["param"] == field, refused.text
    assert alice.get("/v1/health").status_code == 200


def test_a_field_the_grader_does_not_know_is_a_422_naming_it(served: dict[str, Any]) -> None:
    refused = served["alice"].post(VALIDATE, json={"grader": {**EXACT, "operator": "eq"}})
    assert refused.status_code == 422
    assert "grader.string_check.operator" in refused.text


def test_a_failing_sample_scores_0_with_openai_error_flags(served: dict[str, Any]) -> None:
    alice: Caller = served["alice"]
    missing = alice.post(RUN, json={"grader": EXACT, "model_sample": "Paris", "item": {}}).json()
    assert missing["reward"] == 0.0
    errors = missing["metadata"]["errors"]
    assert errors["invalid_variable_error"] and "answer" in errors["message"]
    source = (
        "def grade(sample, item):\n    if item['loop']:\n        while True: pass\n    "
        "return float(sample['output_text'] == item['answer'])\n"
    )
    python = {"type": "python", "name": "py", "source": source}
    good = alice.post(
        RUN, json={"grader": python, "model_sample": "7", "item": {"answer": "7", "loop": False}}
    ).json()
    assert good["reward"] == 1.0 and good["metadata"]["errors"]["message"] is None
    looping = alice.post(
        RUN, json={"grader": python, "model_sample": "7", "item": {"answer": "7", "loop": True}}
    ).json()
    assert looping["reward"] == 0.0
    flags = looping["metadata"]["errors"]
    assert flags["unresponsive_reward_error"] or flags["python_grader_server_error"], flags


def _judge(model: str) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "range": [-1e12, 1e12],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 12, "seed": 1},
        "input": [
            {"role": "system", "content": "Rate the answer from 0 to 10."},
            {"role": "user", "content": "Q: {{item.question}} A: {{sample.output_text}}"},
        ],
    }


def test_score_model_scores_with_the_served_model(served: dict[str, Any]) -> None:
    alice: Caller = served["alice"]
    item = {"question": "What is 2 + 2?"}
    for model in (TINY, "alice/judge"):
        ran = alice.post(RUN, json={"grader": _judge(model), "model_sample": "4", "item": item})
        assert ran.status_code == 200, ran.text
        # what the model answers to the rendered messages, asked directly
        chat = alice.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [
                    {"role": "system", "content": "Rate the answer from 0 to 10."},
                    {"role": "user", "content": "Q: What is 2 + 2? A: 4"},
                ],
                "temperature": 0,
                "max_tokens": 12,
                "seed": 1,
            },
        )
        answer = chat.json()["choices"][0]["message"]["content"]
        body = ran.json()
        try:
            expected = parse_score(answer, -1e12, 1e12)
        except Exception:  # the tiny model's answer holds no number: a parse error
            assert body["reward"] == 0.0
            assert body["metadata"]["errors"]["model_grader_parse_error"], body
            assert repr(answer[:200]) in body["metadata"]["errors"]["message"]
        else:
            assert body["reward"] == expected and body["metadata"]["errors"]["message"] is None


def test_score_model_uses_only_the_callers_models(served: dict[str, Any]) -> None:
    bob: Caller = served["bob"]
    for route in (VALIDATE, RUN):
        body: dict[str, Any] = {"grader": _judge("alice/judge")}
        if route == RUN:
            body |= {"model_sample": "4", "item": {"question": "?"}}
        refused = bob.post(route, json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "grader.model"
    assert bob.post(VALIDATE, json={"grader": _judge(TINY)}).status_code == 200


def test_a_grpo_job_scores_with_a_model_served_here_as_its_owner(served: dict[str, Any]) -> None:
    """A score_model grader inside training: the worker calls the server's inference with a key
    granted to its attempt alone (inference only, as the job's owner), revoked at its end."""
    alice, bob = served["alice"], served["bob"]
    made = alice.post(
        "/v1/datasets",
        json={
            "dataset_id": "sums",
            "purpose": "prompt",
            "source": {"type": "rows", "rows": [{"prompt": f"What is {n} + {n}?"} for n in (1, 2)]},
        },
    )
    assert made.status_code == 200, made.text
    judge = _judge("alice/judge") | {
        "input": [
            {"role": "system", "content": "Rate the answer from 0 to 10."},
            {"role": "user", "content": "Q: {{item.prompt}} A: {{sample.output_text}}"},
        ]
    }
    body: dict[str, Any] = {
        "job_uuid": "judged",
        "model": TINY,
        "algorithm_config": {"group_size": 2, "max_tokens": 4, "kl_coef": 0},
        "grader": judge,
        "training_config": {"n_epochs": 1, "data_config": {"dataset_id": "sums", "batch_size": 2}},
        "finetuning_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    refused = bob.post("/v1/post-training/reinforce", json=body | {"job_uuid": "bobs"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "grader.model"
    made = alice.post("/v1/post-training/reinforce", json=body)
    assert made.status_code == 200, made.text
    done = wait_for_job(alice.http, "judged")
    log = alice.get("/v1/post-training/jobs/judged/logs").json()["lines"]
    # the tiny judge answers noise: the job learns from the numbers in it, or, where it holds
    # none, fails naming what the judge said; either way the worker reached it, as alice
    if done["status"] != "completed":
        assert "the scoring model's answer holds no number" in done["error"], done
    store = KeyStore(served["home"] / "stack")
    try:
        scoped = store.db.all("SELECT owner, scope, revoked_at FROM scoped_keys")
    finally:
        store.close()
    scoped = [r for r in scoped if r["owner"] == "alice"]
    assert [r["scope"] for r in scoped] == ["inference"]  # one attempt, one key
    assert all(r["revoked_at"] is not None for r in scoped)  # given back at the attempt's end
    assert not any("tml-" in line for line in log)


def test_a_scoped_key_reaches_inference_alone(served: dict[str, Any]) -> None:
    store = KeyStore(served["home"] / "stack")
    try:
        key_id, key = store.create_scoped("bob", "inference")
    finally:
        store.close()
    worker = Caller(served["server"].url, key)
    try:
        chat = {"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert worker.post("/v1/chat/completions", json=chat).status_code == 200
        theirs = worker.post("/v1/chat/completions", json=chat | {"model": "alice/judge"})
        assert theirs.status_code == 404, theirs.text  # as bob: alice's model is not his
        for path in ("/v1/files", "/v1/models", "/v1/post-training/jobs"):
            refused = worker.get(path)
            assert refused.status_code == 403 and "inference alone" in refused.text, path
        store = KeyStore(served["home"] / "stack")
        try:
            store.revoke_scoped(key_id)
        finally:
            store.close()
        assert worker.post("/v1/chat/completions", json=chat).status_code == 401
    finally:
        worker.http.close()
