"""Evaluation throughput: rows per second of a llama-post evaluation job against EleutherAI's
lm-eval (0.4.13, its pinned client environment from tests/compat/envs.py, built once and never
timed) with its `hf` model on a generation task over the same rows, in one run. Both run the
bundled SmolLM2-135M-Instruct in float32 on this machine, one after the other, on the same chat
prompts (lm-eval with `--apply_chat_template`), greedy, at most `--tokens` new tokens, stopping at
the end of sequence. lm-eval's task (YAML and JSON Lines) is written into a temporary folder: local
files only, no hub.

Our figure is the wall time from creating the job to its completion (every row answered and
graded, results on disk) over `--rows`, the server already started and its model loaded; the job
sends `--concurrency` rows at once and the engine decodes them together (its `max_batch_size` set
to the same). lm-eval's figure is its own `total_evaluation_time_seconds` (from its command line's
start to its results: loading the model and building the task included, the interpreter's start
not) over the same rows in batches of `--batch-size`; the process's whole wall time is printed too.

Run: .venv/bin/python benchmarks/eval_rows.py [--home DIR] [--rows 64] [--tokens 32]
     [--concurrency 16] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from inference import MODEL, _serve, _wait, run_config
from settings import bundled_model

PORT = 8391
ROOT = Path(__file__).resolve().parents[1]
# A generation task over local JSON Lines (no hub): greedy, at most `tokens` new tokens, stopping
# at the end of sequence (lm-eval's `hf` model always stops there too), graded as the job is.
TASK = """task: bench_rows
dataset_path: json
dataset_kwargs:
  data_files:
    test: bench_rows.jsonl
test_split: test
output_type: generate_until
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  until: []
  max_gen_toks: {tokens}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def questions(rows: int) -> list[str]:
    return [f"Question {i}: name a colour and say why you like it." for i in range(rows)]


def measure_job(home: Path, tmp: Path, rows: int, tokens: int, concurrency: int) -> float:
    env = {
        **os.environ,
        "LLAMA_POST_HOME": str(home),
        "LLAMA_POST_PORT": str(PORT),
        "LLAMA_POST_MAX_BATCH": str(concurrency),
    }
    proc = _serve(run_config(tmp, "float32"), env, tmp / "server.log")
    url = f"http://127.0.0.1:{PORT}"
    try:
        _wait(url, proc)
        http = httpx.Client(base_url=url, timeout=600)
        name = f"bench-{uuid.uuid4().hex[:8]}"  # a home kept between runs holds earlier ones
        data = [{"input_query": q, "expected_answer": "blue"} for q in questions(rows)]
        source = {"type": "rows", "rows": data}
        body = {"dataset_id": name, "purpose": "eval/question-answer", "source": source}
        http.post("/v1/datasets", json=body).raise_for_status()
        grader = {
            "type": "string_check",
            "name": "says",
            "input": "{{sample.output_text}}",
            "reference": "{{item.expected_answer}}",
            "operation": "ilike",
        }
        bench = {"benchmark_id": name, "dataset_id": name, "graders": [grader]}
        http.post("/v1/evaluation/benchmarks", json=bench).raise_for_status()
        job = {
            "benchmark_id": name,
            "model": MODEL,
            "sampling": {"max_tokens": tokens},
            "concurrency": concurrency,
        }
        start = time.perf_counter()
        made = http.post("/v1/evaluation/jobs", json=job).json()
        while (state := http.get(f"/v1/evaluation/jobs/{made['evaluation_id']}").json())[
            "status"
        ] not in ("completed", "failed", "cancelled"):
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        assert state["status"] == "completed" and state["row_counts"]["done"] == rows, state
        return rows / seconds
    finally:
        proc.terminate()
        proc.wait(30)


def measure_lm_eval(folder: Path, tmp: Path, rows: int, tokens: int, batch_size: int) -> dict:
    """lm-eval 0.4.13 (its pinned client environment, tests/compat/pins) with `--model hf` on a
    generation task over the same rows: its rows per second from its own wall time."""
    sys.path.insert(0, str(ROOT))
    from tests.compat.envs import client_python

    python = client_python("lm-eval-0.4.13")  # built once per lock, reused; never timed
    tasks = tmp / "lm-eval"
    tasks.mkdir()
    data = "".join(json.dumps({"question": q, "answer": "blue"}) + "\n" for q in questions(rows))
    (tasks / "bench_rows.jsonl").write_text(data)
    (tasks / "bench_rows.yaml").write_text(TASK.format(tokens=tokens))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tasks / ".hf"),
    }
    model_args = f"pretrained={folder},dtype=float32"
    command = [
        str(python), "-m", "lm_eval",
        "--model", "hf", "--model_args", model_args, "--device", "cpu",
        "--tasks", "bench_rows", "--include_path", str(tasks),
        "--batch_size", str(batch_size), "--num_fewshot", "0",
        "--apply_chat_template",  # the same chat prompts as the job's
        "--output_path", str(tasks / "out"),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tasks, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lm-eval failed:\n{done.stderr[-4000:]}")
    process = time.perf_counter() - start
    results = json.loads(next((tasks / "out").rglob("results_*.json")).read_text())
    assert results["n-samples"]["bench_rows"]["effective"] == rows, results["n-samples"]
    own = float(results["total_evaluation_time_seconds"])
    return {"rows_per_s": rows / own, "seconds": own, "process_seconds": process}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    folder = bundled_model(args.home)
    with tempfile.TemporaryDirectory() as tmp:
        ours = measure_job(args.home, Path(tmp), args.rows, args.tokens, args.concurrency)
        lm_eval = measure_lm_eval(folder, Path(tmp), args.rows, args.tokens, args.batch_size)
    report = {
        "evaluation_job_rows_per_s": ours,
        "lm_eval_hf_rows_per_s": lm_eval["rows_per_s"],
        "ratio": ours / lm_eval["rows_per_s"],
        "lm_eval_seconds": lm_eval["seconds"],
        "lm_eval_process_seconds": lm_eval["process_seconds"],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
