"""Observability on a real server: Prometheus metrics at /metrics, request ids, JSON logs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support import TINY, Server, distribution, jobs_dir, wait_for_job, wait_for_step

ROWS = [{"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is blue."} for i in range(12)]
JOB_STATUS = "/v1/post-training/jobs/{job_uuid}"
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("observed")
    config = distribution(home, tiny_model, post_training={"watch_interval_seconds": 0.5})
    srv = Server(config, home, env={"LLAMA_POST_LOG_FORMAT": "json"}).start(timeout=60)
    yield srv
    srv.stop()


def scrape(url: str, **kw: Any) -> list[Sample]:
    answer = httpx.get(f"{url}/metrics", **kw)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(answer.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_requests_are_counted_and_timed_by_route_template(server: Server) -> None:
    before = scrape(server.url)
    assert httpx.get(f"{server.url}/v1/models").status_code == 200
    assert httpx.get(f"{server.url}/v1/models").status_code == 200
    assert httpx.get(f"{server.url}/v1/post-training/jobs/no-such-job").status_code == 404
    assert httpx.get(f"{server.url}/v1/no/such/route/42").status_code == 404
    after = scrape(server.url)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    count, seconds = "llama_post_http_requests_total", "llama_post_http_request_duration_seconds"
    models = {"method": "GET", "route": "/v1/models", "status": "200"}
    assert added(count, **models) == 2
    assert added(f"{seconds}_count", **models) == 2
    assert added(f"{seconds}_sum", **models) > 0
    assert added(f"{seconds}_bucket", **models, le="+Inf") == 2
    missing = {"method": "GET", "route": JOB_STATUS, "status": "404"}
    assert added(count, **missing) == 1 and added(f"{seconds}_count", **missing) == 1
    assert added(count, method="GET", route="unmatched", status="404") == 1
    routes = {s.labels["route"] for s in after if s.name == count}
    assert not any("no-such-job" in r or "42" in r for r in routes), routes  # templates only
    assert added(count, route="/metrics", status="200") == 1  # /metrics counts itself


def test_chat_completions_count_tokens_and_time_the_first(server: Server) -> None:
    before = scrape(server.url)
    for stream in (False, True):
        answer = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": TINY,
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 4,
                "stream": stream,
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    after = scrape(server.url)
    tokens = "llama_post_inference_generated_tokens_total"
    ttft = "llama_post_inference_time_to_first_token_seconds_count"
    assert value(after, tokens, model=TINY) - value(before, tokens, model=TINY) >= 2
    assert value(after, ttft, model=TINY) - value(before, ttft, model=TINY) == 2
    # the decode batch is idle again; the gauges are there, labelled by the base model
    for gauge in (
        "llama_post_inference_batch_active_sequences",
        "llama_post_inference_batch_occupancy_ratio",
        "llama_post_inference_queue_waiting_requests",
    ):
        assert [s.value for s in after if s.name == gauge and s.labels == {"model": TINY}] == [0]
    streamed = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    added = value(after, "llama_post_http_requests_total", **streamed) - value(
        before, "llama_post_http_requests_total", **streamed
    )
    assert added == 2  # a stream is counted once


def test_jobs_by_state_steps_and_a_restart_after_a_killed_worker(server: Server) -> None:
    made = httpx.post(
        f"{server.url}/v1/datasets",
        json={
            "dataset_id": "facts",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    before = scrape(server.url)

    assert _job(server, "straight", epochs=1).status_code == 200  # 12 rows, batch 2: 6 steps
    straight = wait_for_job(server, "straight", _done)
    assert straight["status"] == "completed", straight
    assert straight["progress"]["step"] == 6
    middle = scrape(server.url)
    steps = "llama_post_job_steps_total"
    assert value(middle, steps, provider="peft") - value(before, steps, provider="peft") == 6
    assert value(middle, "llama_post_jobs", provider="peft", state="completed") == 1
    assert value(middle, "llama_post_jobs", provider="peft", state="failed") == 0

    assert _job(server, "killed", epochs=3).status_code == 200  # 18 steps
    running = wait_for_step(server, jobs_dir(server.config.parent), "killed", 3)
    os.kill(running["resources_allocated"]["worker_pid"], signal.SIGKILL)
    killed = wait_for_job(server, "killed", _done)
    assert killed["status"] == "completed", killed
    assert len(killed["attempts"]) == 2
    after = scrape(server.url)
    restarts, failures = (
        "llama_post_job_worker_restarts_total",
        "llama_post_job_worker_failures_total",
    )
    assert value(after, restarts, provider="peft") - value(before, restarts, provider="peft") == 1
    # an unexplained SIGKILL reads as the kernel's out-of-memory killer
    assert value(after, failures, provider="peft", reason="out_of_memory") == 1
    # the retry replays the steps after its checkpoint: they count once
    assert value(after, steps, provider="peft") - value(before, steps, provider="peft") == 6 + 18
    assert value(after, "llama_post_jobs", provider="peft", state="completed") == 2
    assert value(after, "llama_post_jobs", provider="peft", state="in_progress") == 0


def test_json_logs_carry_request_ids_routes_and_ids(server: Server) -> None:
    traced = httpx.get(
        f"{server.url}/v1/post-training/jobs/missing-job", headers={"X-Request-ID": "trace-1.a"}
    )
    assert traced.status_code == 404
    assert traced.headers["x-request-id"] == "trace-1.a"
    assert traced.json()["error"]["request_id"] == "trace-1.a"
    unmatched = httpx.get(f"{server.url}/nowhere", headers={"X-Request-ID": "trace-2"})
    assert unmatched.status_code == 404 and unmatched.json()["error"]["request_id"] == "trace-2"
    for bad in ("has spaces", "x" * 200, "<script>", "semi;colon"):
        replaced = httpx.get(f"{server.url}/v1/models", headers={"X-Request-ID": bad})
        assert GENERATED.fullmatch(replaced.headers["x-request-id"]), bad
    fresh = httpx.get(f"{server.url}/v1/models")
    assert GENERATED.fullmatch(fresh.headers["x-request-id"])
    streamed = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        headers={"X-Request-ID": "trace-stream"},
        timeout=60,
    )
    assert streamed.headers["x-request-id"] == "trace-stream"

    # the stream's access line is written once its last chunk is sent: the last line to wait for
    output = server.wait_for_output('"llama_post.access".*"trace-stream"')
    lines = [line for line in output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines too
    requests = {r["request_id"]: r for r in records if r["logger"] == "llama_post.access"}
    line = requests["trace-1.a"]
    assert line["route"] == JOB_STATUS and line["method"] == "GET" and line["status"] == 404
    assert line["job_uuid"] == line["job_id"] == "missing-job"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert requests["trace-2"]["route"] == "unmatched"
    assert requests["trace-stream"]["route"] == "/v1/chat/completions"
    assert requests["trace-stream"]["duration_ms"] >= requests["trace-stream"]["latency_ms"]
    assert requests[fresh.headers["x-request-id"]]["status"] == 200


def _keys(config: Path, *args: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "llama_post", "keys", *args, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.mark.parametrize("public", [False, True])
def test_metrics_under_auth(tmp_path: Path, public: bool) -> None:
    config = distribution(tmp_path) | {
        "auth": {"enabled": True},
        "server": {"log_format": "json", "metrics": {"public": public}},
    }
    server = Server(config, tmp_path)
    admin = _keys(server.config, "create", "--owner", "ops", "--admin")
    user = _keys(server.config, "create", "--owner", "alice")
    server.start(timeout=60)
    try:
        bare = httpx.get(f"{server.url}/metrics", headers={"X-Request-ID": "scrape-1"})
        as_user = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": user})
        refused = httpx.get(f"{server.url}/v1/models", headers={"X-Request-ID": "no-key"})
        in_query = httpx.get(f"{server.url}/v1/models", params={"api_key": user})
        samples = scrape(server.url, headers={"Authorization": f"Bearer {admin}"})
    finally:
        server.stop()
    if public:
        assert bare.status_code == 200 and as_user.status_code == 200
    else:
        assert bare.status_code == 401, bare.text
        assert bare.json()["error"]["request_id"] == "scrape-1"
        assert as_user.status_code == 403, as_user.text  # its labels name every owner's models
        assert "admin key" in as_user.json()["error"]["message"]
    # an auth refusal carries its id, and is counted under its route's template
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key"
    assert refused.json()["error"]["request_id"] == "no-key"
    assert in_query.status_code == 401
    refusals = value(samples, "llama_post_http_requests_total", route="/v1/models", status="401")
    assert refusals == 2
    output = server.output()
    assert user not in output and admin not in output
    assert any(
        json.loads(line).get("request_id") == "no-key" for line in output.splitlines() if line
    )


def _job(server: Server, job_uuid: str, epochs: int) -> httpx.Response:
    body = {
        "job_uuid": job_uuid,
        "model": TINY,
        "training_config": {
            "n_epochs": epochs,
            "data_config": {"dataset_id": "facts", "batch_size": 2, "shuffle": True},
            "optimizer_config": {"lr": 3e-3, "num_warmup_steps": 1},
            "save_every": 3,
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    return httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)


def _done(status: dict[str, Any]) -> bool:
    return status["status"] in ("completed", "failed", "cancelled")
