"""What training did, measured three ways: the tiny model is fine-tuned to answer one word, then
the base and the result are evaluated on held-out questions through the native API,
llama-stack-client 0.2's eval API (its own environment) and the openai SDK's `client.evals`.
The three grade the same answers the same way, so they agree on every score; the fine-tuned
model scores higher. The job names the benchmark, so the server evaluates each of its
checkpoints as well, and a checkpoint can be named for an evaluation of its own."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai

from tests.compat import openai_evals_flow
from tests.compat.envs import client_python, python312, run_flow
from tests.support import TINY, Server

WORD = "blorp"
TRAIN = [{"prompt": f"Question {i}: say the word.", "completion": WORD} for i in range(16)]
HELD_OUT = [
    {"input_query": f"Held-out question {i}: say the word.", "expected_answer": WORD}
    for i in range(20, 26)
]
CONTAINS = {  # Llama Stack's basic::subset_of, as a grader
    "type": "string_check",
    "name": "basic::subset_of",
    "input": "{{sample.output_text}}",
    "reference": "{{item.expected_answer}}",
    "operation": "like",
}


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _fine_tune(http: httpx.Client, benchmark_id: str) -> str:
    dataset_id = f"word-{uuid.uuid4().hex[:8]}"
    rows = {"type": "rows", "rows": TRAIN}
    _ok(
        http.post(
            "/v1/datasets", json={"dataset_id": dataset_id, "purpose": "instruct", "source": rows}
        )
    )
    job_uuid = f"word-{uuid.uuid4().hex[:8]}"
    body = {
        "job_uuid": job_uuid,
        "model": TINY,
        "training_config": {
            "n_epochs": 3,
            "data_config": {"dataset_id": dataset_id, "batch_size": 4},
            "optimizer_config": {"lr": 1e-2, "num_warmup_steps": 1},
            "save_every": 4,
        },
        "algorithm_config": {"type": "LoRA", "rank": 8, "alpha": 16, "apply_lora_to_mlp": True},
        # the server evaluates each checkpoint as it is saved, and the result at the end
        "evaluations": {"benchmarks": [benchmark_id], "max_tokens": 8},
    }
    _ok(http.post("/v1/post-training/supervised-fine-tune", json=body))
    deadline = time.monotonic() + 180
    while (status := _ok(http.get(f"/v1/post-training/jobs/{job_uuid}")))["status"] not in (
        "completed",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["status"] == "completed", status
    return job_uuid


def _native(http: httpx.Client, benchmark_id: str, model: str, **chosen: str) -> float:
    body = {
        "benchmark_id": benchmark_id,
        "sampling": {"max_tokens": 8},
        **(chosen or {"model": model}),
    }
    job = _ok(http.post("/v1/evaluation/jobs", json=body))
    deadline = time.monotonic() + 120
    while (job := _ok(http.get(f"/v1/evaluation/jobs/{job['evaluation_id']}")))["status"] not in (
        "completed",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "completed", job
    mean: float = job["metrics"]["basic::subset_of"]["mean"]
    return mean


def _along_the_way(http: httpx.Client, job_uuid: str) -> dict[str, float]:
    """The evaluations the job's `evaluations` started, once done: each target's mean."""
    deadline = time.monotonic() + 120
    while True:
        made = _ok(http.get("/v1/evaluation/jobs", params={"job_uuid": job_uuid}))["data"]
        if len(made) == 3 and all(j["status"] == "completed" for j in made):
            return {
                j["request"]["metadata"]["target"]: j["metrics"]["basic::subset_of"]["mean"]
                for j in made
            }
        assert time.monotonic() < deadline, made
        time.sleep(0.2)


def _openai(server: Server, model: str) -> float:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    made = client.evals.create(
        name="held-out",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{**CONTAINS, "name": "contains"}],  # type: ignore[list-item]
    )
    run = openai_evals_flow.run_over(
        client,
        made.id,
        model,
        HELD_OUT,
        input_messages={
            "type": "template",
            "template": [{"role": "user", "content": "{{item.input_query}}"}],
        },
        sampling_params={"max_completion_tokens": 8, "temperature": 0},
    )
    assert run.status == "completed", run
    counts = run.result_counts
    return float(counts.passed) / float(counts.total)


def test_three_surfaces_agree_and_fine_tuning_raised_the_score(server: Server) -> None:
    python = client_python("llama-stack-client-0.2.23", python312())
    with httpx.Client(base_url=server.url, timeout=60) as http:
        dataset_id = f"held-{uuid.uuid4().hex[:8]}"
        rows = {"type": "rows", "rows": HELD_OUT}
        body = {"dataset_id": dataset_id, "purpose": "eval/question-answer", "source": rows}
        _ok(http.post("/v1/datasets", json=body))
        benchmark_id = f"held-{uuid.uuid4().hex[:8]}"
        bench = {"benchmark_id": benchmark_id, "dataset_id": dataset_id, "graders": [CONTAINS]}
        _ok(http.post("/v1/evaluation/benchmarks", json=bench))
        job_uuid = _fine_tune(http, benchmark_id)
        tuned = f"ft/{job_uuid}"
        scores: dict[str, dict[str, float]] = {}
        for model in (TINY, tuned):
            llama = json.loads(
                run_flow(python, "llama_stack_eval_flow.py", server.url, model, benchmark_id)
            )
            scores[model] = {
                "native": _native(http, benchmark_id, model),
                "llama_stack": llama["basic::subset_of"],
                "openai": _openai(server, model),
            }
        # a checkpoint along the way, served as a model of its own for the evaluation
        checkpoints = _ok(http.get(f"/v1/post-training/jobs/{job_uuid}"))["checkpoints"]
        first = min(checkpoints, key=lambda c: c["step"])
        assert first["model_id"] is None and len(checkpoints) > 1, checkpoints
        midway = _native(http, benchmark_id, "", checkpoint=first["identifier"])
        model = _ok(http.get(f"/v1/models/ckpt/{first['identifier']}"))
        assert model["kind"] == "adapter" and model["base_model"] == TINY
        both = {"benchmark_id": benchmark_id, "model": TINY, "checkpoint": first["identifier"]}
        refused = http.post("/v1/evaluation/jobs", json=both)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        nothing = {"benchmark_id": benchmark_id, "checkpoint": f"{job_uuid}/step-999999"}
        refused = http.post("/v1/evaluation/jobs", json=nothing)
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "checkpoint"
        along = _along_the_way(http, job_uuid)
        page = http.get(f"/ui/jobs/{job_uuid}")  # the job's page lists them by checkpoint
        assert page.status_code == 200 and page.text.count("data-evaluation=") == 3, page.text
    assert 0 <= midway <= 1
    # one evaluation per checkpoint (steps 4, 8, 12: the last is the fine-tuned model's)
    assert sorted(along) == [f"{job_uuid}/step-{s:06d}" for s in (4, 8, 12)], along
    assert along[f"{job_uuid}/step-000004"] == midway
    assert along[f"{job_uuid}/step-000012"] == scores[tuned]["native"]
    for model, seen in scores.items():
        assert len(set(seen.values())) == 1, (model, scores)  # the three agree
    assert scores[tuned]["native"] > scores[TINY]["native"], scores
    assert scores[tuned]["native"] >= 0.5, scores
