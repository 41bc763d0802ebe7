"""Evaluation jobs on a real server with the tiny model: every row answered as the same chat
sent alone and graded, exact metrics with their intervals, bad input refused by field and row,
cancel, and (on a server with keys) owners kept apart and a SIGKILL mid-job resumed without
grading a row twice."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.test_auth import _key
from tests.support import TINY, Server, distribution

Z95 = 1.959963984540054
FINAL = ("completed", "failed", "cancelled")


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _dataset(http: httpx.Client, dataset_id: str, rows: list[dict[str, Any]]) -> None:
    body = {
        "dataset_id": dataset_id,
        "purpose": "eval/question-answer",
        "source": {"type": "rows", "rows": rows},
    }
    _ok(http.post("/v1/datasets", json=body))


def _exact(name: str = "exact", field: str = "expected_answer") -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": name,
        "input": "{{sample.output_text}}",
        "reference": f"{{{{item.{field}}}}}",
        "operation": "eq",
    }


def _wait(http: httpx.Client, evaluation_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = _ok(http.get(f"/v1/evaluation/jobs/{evaluation_id}"))
        if job["status"] in FINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(http.get(f"/v1/evaluation/jobs/{evaluation_id}").text)


def _alone(http: httpx.Client, question: str, max_tokens: int) -> str:
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    answer: str = _ok(http.post("/v1/chat/completions", json=body))["choices"][0]["message"][
        "content"
    ]
    return answer


@pytest.fixture(scope="module")
def http(server: Server) -> Any:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_every_row_is_graded_as_its_chat_answered_alone(http: httpx.Client) -> None:
    questions = [f"Question {i}: name a colour." for i in range(6)]
    alone = [_alone(http, q, 6) for q in questions]
    # the first three rows expect what the model answers; the others something it never says
    rows = [
        {"input_query": q, "expected_answer": alone[i] if i < 3 else "zebra-zebra"}
        for i, q in enumerate(questions)
    ]
    _dataset(http, "eval-colours", rows)
    close = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.expected_answer}}",
        "evaluation_metric": "fuzzy_match",
    }
    bench = {"benchmark_id": "colours", "dataset_id": "eval-colours", "graders": [_exact(), close]}
    made = _ok(http.post("/v1/evaluation/benchmarks", json=bench))
    assert made["row_count"] == 6 and made["pass_threshold"] == 1.0
    assert "colours" in [
        b["benchmark_id"] for b in _ok(http.get("/v1/evaluation/benchmarks"))["data"]
    ]

    body = {
        "benchmark_id": "colours",
        "model": TINY,
        "sampling": {"max_tokens": 6},
        "concurrency": 6,
    }
    job = _ok(http.post("/v1/evaluation/jobs", json=body))
    assert job["evaluation_id"].startswith("evaljob-") and job["status"] in ("queued", "running")
    done = _wait(http, job["evaluation_id"])
    assert done["status"] == "completed", done
    assert done["row_counts"] == {"total": 6, "done": 6, "errored": 0, "passed": 3}

    exact = done["metrics"]["exact"]
    stderr = math.sqrt(0.3 / 6)  # the sample variance of three 1s and three 0s is 0.3
    assert exact["count"] == 6 and exact["errors"] == 0 and exact["mean"] == 0.5
    assert math.isclose(exact["stderr"], stderr)
    assert math.isclose(exact["ci95_low"], 0.5 - Z95 * stderr)
    assert math.isclose(exact["ci95_high"], 0.5 + Z95 * stderr)
    assert exact["pass_rate"] == 0.5 and exact["passed"] == 3 and exact["failed"] == 3
    assert 0 < exact["pass_rate_ci95_low"] < 0.5 < exact["pass_rate_ci95_high"] < 1

    results = _ok(http.get(f"/v1/evaluation/jobs/{job['evaluation_id']}/results"))
    assert [r["index"] for r in results["data"]] == list(range(6)) and not results["has_more"]
    for i, row in enumerate(results["data"]):
        assert row["input"] == [{"role": "user", "content": questions[i]}]
        assert row["output"] == alone[i]  # decoded together, answered as alone
        assert row["scores"]["exact"] == (1.0 if i < 3 else 0.0) and row["errors"] == {}
        assert row["passed"]["exact"] is (i < 3)
        assert row["scores"]["close"] == (1.0 if i < 3 else row["scores"]["close"])
    assert math.isclose(
        done["metrics"]["close"]["mean"], sum(r["scores"]["close"] for r in results["data"]) / 6
    )
    page = _ok(
        http.get(
            f"/v1/evaluation/jobs/{job['evaluation_id']}/results",
            params={"start_index": 4, "limit": 1},
        )
    )
    assert [r["index"] for r in page["data"]] == [4] and page["next_start_index"] == 5

    events = _ok(http.get(f"/v1/evaluation/jobs/{job['evaluation_id']}/events"))["data"]
    messages = [e["message"] for e in events]
    assert messages[0].startswith("created") and messages[1] == "started", messages
    assert messages[-1].startswith("completed: 6 rows"), messages
    listed = _ok(http.get("/v1/evaluation/jobs", params={"benchmark_id": "colours"}))["data"]
    assert [j["evaluation_id"] for j in listed] == [job["evaluation_id"]]


def test_input_messages_templates_and_a_system_message(http: httpx.Client) -> None:
    _dataset(http, "eval-cities", [{"city": "Paris", "answer": "France"}])
    bench = {
        "benchmark_id": "cities",
        "dataset_id": "eval-cities",
        "graders": [_exact(field="answer")],
        "input_messages": [{"role": "user", "content": "Where is {{item.city}}?"}],
    }
    _ok(http.post("/v1/evaluation/benchmarks", json=bench))
    body = {"benchmark_id": "cities", "model": TINY, "system_message": "Be brief."}
    job = _wait(http, _ok(http.post("/v1/evaluation/jobs", json=body))["evaluation_id"])
    row = _ok(http.get(f"/v1/evaluation/jobs/{job['evaluation_id']}/results"))["data"][0]
    assert row["input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is Paris?"},
    ]


def test_bad_input_is_refused_naming_the_field_or_row(http: httpx.Client) -> None:
    _dataset(http, "eval-bad", [{"input_query": "Hi?", "expected_answer": "x"}, {"other": 1}])
    _dataset(http, "eval-good", [{"input_query": "Hi?", "expected_answer": "x"}])

    def refused(path: str, body: dict[str, Any], status: int, param: str) -> dict[str, Any]:
        answer = http.post(path, json=body)
        assert answer.status_code == status, answer.text
        error: dict[str, Any] = answer.json()["error"]
        assert error["param"] == param, error
        return error

    bench = {"benchmark_id": "bad", "dataset_id": "eval-good", "graders": [_exact()]}
    benchmarks = "/v1/evaluation/benchmarks"
    error = refused(benchmarks, {**bench, "dataset_id": "eval-bad"}, 400, "input_messages")
    assert error["details"] == [
        {"row": 1, "field": None, "message": error["details"][0]["message"]}
    ]
    refused(benchmarks, {**bench, "graders": [_exact(), _exact()]}, 400, "graders[1].name")
    broken = {**_exact(), "input": "{{ sample.output_text"}
    refused(benchmarks, {**bench, "graders": [broken]}, 400, "graders[0].input")
    refused(benchmarks, {**bench, "dataset_id": "eval-none"}, 404, "dataset_id")
    missing = [{"role": "user", "content": "{{item.nope}}"}]
    error = refused(benchmarks, {**bench, "input_messages": missing}, 400, "input_messages")
    assert error["details"][0]["row"] == 0 and "nope" in error["details"][0]["message"]
    assert http.post(benchmarks, json={**bench, "graders": []}).status_code == 422
    _ok(http.post(benchmarks, json=bench))
    refused(benchmarks, bench, 409, "benchmark_id")

    jobs = "/v1/evaluation/jobs"
    refused(jobs, {"benchmark_id": "nothing", "model": TINY}, 404, "benchmark_id")
    refused(jobs, {"benchmark_id": "bad", "model": "no/such-model"}, 404, "model")
    assert http.get("/v1/evaluation/jobs/evaljob-000000000000000000000000").status_code == 404
    assert (
        http.post(jobs, json={"benchmark_id": "bad", "model": TINY, "concurrency": 0}).status_code
        == 422
    )
    # a post-training job naming a benchmark that does not exist is refused as it is created
    tune = _tuning("eval-good", ["bad", "nothing"])
    error = refused(
        "/v1/post-training/supervised-fine-tune", tune, 404, "evaluations.benchmarks[1]"
    )
    assert "'nothing'" in error["message"], error
    assert http.get("/v1/post-training/jobs/named-nothing").status_code == 404  # never made


def _tuning(dataset_id: str, benchmarks: list[str]) -> dict[str, Any]:
    return {
        "job_uuid": "named-nothing",
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "data_config": {"dataset_id": dataset_id, "batch_size": 1},
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
        "evaluations": {"benchmarks": benchmarks},
    }


def test_cancel_keeps_what_was_graded(http: httpx.Client) -> None:
    rows = [{"input_query": f"Tell a long story {i}.", "expected_answer": "x"} for i in range(40)]
    _dataset(http, "eval-long", rows)
    bench = {"benchmark_id": "long", "dataset_id": "eval-long", "graders": [_exact()]}
    _ok(http.post("/v1/evaluation/benchmarks", json=bench))
    body = {"benchmark_id": "long", "model": TINY, "sampling": {"max_tokens": 32}, "concurrency": 1}
    job = _ok(http.post("/v1/evaluation/jobs", json=body))
    path = f"/v1/evaluation/jobs/{job['evaluation_id']}"
    deadline = time.monotonic() + 60
    while _ok(http.get(path))["row_counts"]["done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = _ok(http.post(f"{path}/cancel"))
    assert cancelled["status"] == "cancelled", cancelled
    done = cancelled["row_counts"]["done"]
    assert 2 <= done < 40 and cancelled["metrics"]["exact"]["count"] == done
    assert len(_ok(http.get(f"{path}/results", params={"limit": 100}))["data"]) == done
    assert http.post(f"{path}/cancel").status_code == 409
    assert _ok(http.get(f"{path}/events"))["data"][-1]["message"].startswith("cancelled")


def test_owners_and_a_killed_server_resuming_its_job(tmp_path: Path, tiny_model: Path) -> None:
    config = distribution(tmp_path, tiny_model, inference={"torch_threads": 1})
    server = Server(config | {"auth": {"enabled": True}}, tmp_path)
    alice, bob = _key(server.config, "alice"), _key(server.config, "bob")
    server.start(timeout=120)
    as_alice = httpx.Client(headers={"Authorization": f"Bearer {alice}"}, timeout=60)
    as_bob = httpx.Client(headers={"Authorization": f"Bearer {bob}"}, timeout=60)
    try:
        as_alice.base_url = as_bob.base_url = server.url
        rows = [{"input_query": f"Count to {i}.", "expected_answer": "1"} for i in range(30)]
        _dataset(as_alice, "eval-mine", rows)
        bench = {"benchmark_id": "mine", "dataset_id": "eval-mine", "graders": [_exact()]}
        # bob may not build a benchmark over alice's dataset, nor see hers
        assert as_bob.post("/v1/evaluation/benchmarks", json=bench).status_code == 404
        _ok(as_alice.post("/v1/evaluation/benchmarks", json=bench))
        assert as_bob.get("/v1/evaluation/benchmarks/mine").status_code == 404
        # nor name it in a post-training job of his: refused as though it did not exist
        tune = as_bob.post("/v1/post-training/supervised-fine-tune", json=_tuning("x", ["mine"]))
        assert tune.status_code == 404, tune.text
        assert tune.json()["error"]["param"] == "evaluations.benchmarks[0]"
        assert _ok(as_bob.get("/v1/evaluation/benchmarks"))["data"] == []
        body = {
            "benchmark_id": "mine",
            "model": TINY,
            "sampling": {"max_tokens": 24},
            "concurrency": 2,
        }
        assert as_bob.post("/v1/evaluation/jobs", json=body).status_code == 404
        job = _ok(as_alice.post("/v1/evaluation/jobs", json=body))
        path = f"/v1/evaluation/jobs/{job['evaluation_id']}"
        for call in (
            as_bob.get(path),
            as_bob.get(f"{path}/results"),
            as_bob.post(f"{path}/cancel"),
        ):
            assert call.status_code == 404, call.text
        assert _ok(as_bob.get("/v1/evaluation/jobs"))["data"] == []

        deadline = time.monotonic() + 60
        while _ok(as_alice.get(path))["row_counts"]["done"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.stop(signal.SIGKILL)
        written = tmp_path / "stack" / "evaluations" / job["evaluation_id"] / "results.jsonl"
        before = written.read_bytes()
        ran = len(before.splitlines())
        assert 4 <= ran < 30

        server.start(timeout=120)
        as_alice.base_url = as_bob.base_url = server.url
        done = _wait(as_alice, job["evaluation_id"])
        assert done["status"] == "completed" and done["row_counts"]["done"] == 30, done
        assert written.read_bytes().startswith(before)  # what ran before the kill stays
        assert len(written.read_bytes().splitlines()) == 30  # and no row was graded twice
        results = _ok(as_alice.get(f"{path}/results"))["data"]
        assert [r["index"] for r in results] == list(range(30))
        events = [e["message"] for e in _ok(as_alice.get(f"{path}/events"))["data"]]
        assert any(m.startswith(f"resumed: {ran} of 30") for m in events), events
    finally:
        as_alice.close()
        as_bob.close()
        server.stop()
