"""Llama Stack's eval family as a llama-stack-client user writes it, against llama-post:
benchmarks over an `eval/question-answer` dataset, scoring functions, `scoring.score`, and an
eval job's status and result. 0.2 calls `client.benchmarks` and `client.eval`; 0.7 calls
`client.alpha.benchmarks` and `client.alpha.eval` (under `/v1alpha`) and `client.beta.datasets`.

    python tests/compat/llama_stack_eval_flow.py http://127.0.0.1:PORT tiny/llama
    python tests/compat/llama_stack_eval_flow.py URL MODEL BENCHMARK   # one job's accuracy

It prints one JSON line of what it saw; every check is an `assert`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import llama_stack_client
from llama_stack_client import LlamaStackClient

FUNCTIONS = ["basic::equality", "basic::subset_of"]


def new(client: LlamaStackClient) -> bool:
    return tuple(int(p) for p in llama_stack_client.__version__.split(".")[:2]) >= (0, 7)


def evaluate(client: LlamaStackClient, benchmark_id: str, model: str, **extra: Any) -> Any:
    """Run `model` over the benchmark greedily; the job's result once it is done."""
    evals: Any = client.alpha.eval if new(client) else client.eval
    job = evals.run_eval(
        benchmark_id,
        benchmark_config={
            "eval_candidate": {
                "type": "model",
                "model": model,
                "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 8},
            },
            "scoring_params": {},
            **extra,
        },
    )
    deadline = time.monotonic() + 120
    while (status := evals.jobs.status(job.job_id, benchmark_id=benchmark_id)).status in (
        "scheduled",
        "in_progress",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status.status == "completed", status
    return job.job_id, evals.jobs.retrieve(job.job_id, benchmark_id=benchmark_id)


def flow(client: LlamaStackClient, model: str) -> dict[str, Any]:
    functions = client.scoring_functions.list()
    assert [f.identifier for f in functions] == FUNCTIONS
    assert client.scoring_functions.retrieve("basic::equality").provider_id == "llama-post"

    scored = client.scoring.score(
        input_rows=[
            {"generated_answer": "Paris", "expected_answer": "Paris"},
            {"generated_answer": "It is Paris.", "expected_answer": "Paris"},
            {"generated_answer": "Rome", "expected_answer": "Paris"},
        ],
        scoring_functions={"basic::equality": None, "basic::subset_of": None},
    )
    equality = scored.results["basic::equality"]
    assert [r["score"] for r in equality.score_rows] == [1.0, 0.0, 0.0]
    assert equality.aggregated_results["accuracy"]["num_correct"] == 1
    subset = scored.results["basic::subset_of"]
    assert [r["score"] for r in subset.score_rows] == [1.0, 1.0, 0.0]

    # rows whose expected answer is what the model says to the first two of them
    questions = [f"Llama question {i}?" for i in range(4)]
    alone = []
    for q in questions:
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": q}], max_tokens=8, temperature=0
        )
        alone.append(chat.choices[0].message.content)
    dataset_id = f"lse-{uuid.uuid4().hex[:8]}"
    rows = [
        {"input_query": q, "expected_answer": alone[i] if i < 2 else "zebra-zebra"}
        for i, q in enumerate(questions)
    ]
    datasets: Any = client.beta.datasets if new(client) else client.datasets
    benchmarks: Any = client.alpha.benchmarks if new(client) else client.benchmarks
    datasets.register(
        purpose="eval/question-answer", source={"type": "rows", "rows": rows}, dataset_id=dataset_id
    )
    benchmark_id = f"lsb-{uuid.uuid4().hex[:8]}"
    benchmarks.register(
        benchmark_id=benchmark_id, dataset_id=dataset_id, scoring_functions=FUNCTIONS
    )
    found = benchmarks.retrieve(benchmark_id)
    assert found.dataset_id == dataset_id and found.scoring_functions == FUNCTIONS
    assert benchmark_id in [b.identifier for b in benchmarks.list()]

    job_id, result = evaluate(client, benchmark_id, model)
    assert [g["generated_answer"] for g in result.generations] == alone
    accuracy = result.scores["basic::equality"].aggregated_results["accuracy"]
    assert accuracy == {"accuracy": 0.5, "num_correct": 2, "num_total": 4}, accuracy
    _, first = evaluate(client, benchmark_id, model, num_examples=1)
    assert len(first.generations) == 1

    try:
        client.scoring.score(
            input_rows=[{"expected_answer": "x"}], scoring_functions={"basic::equality": None}
        )
    except llama_stack_client.BadRequestError as exc:
        assert "input_rows[0].generated_answer" in str(exc), exc
    else:
        raise AssertionError("a row without its answer was scored")
    return {"job": job_id, "accuracy": accuracy["accuracy"], "benchmark": benchmark_id}


def main(base_url: str, model: str, benchmark_id: str | None = None) -> dict[str, Any]:
    client = LlamaStackClient(base_url=base_url, max_retries=0)
    seen: dict[str, Any] = {"llama_stack_client": llama_stack_client.__version__}
    if benchmark_id is None:
        return seen | flow(client, model)
    _, result = evaluate(client, benchmark_id, model)
    return seen | {
        name: score.aggregated_results["accuracy"]["accuracy"]
        for name, score in result.scores.items()
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
