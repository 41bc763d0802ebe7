"""Evaluation throughput: rows per second of a llama-post evaluation job against a Hugging Face
`generate` loop over the same rows, the way lm-eval's `hf` model runs a generation task
(`generate_until`: greedy, left-padded batches of `--batch-size`, each batch decoded until all
its rows stop). Both run the bundled SmolLM2-135M-Instruct in float32 on this machine, one
after the other, on the same chat prompts, with the same `--tokens` limit, and stop at the end
of sequence. lm-eval itself is pinned in a client environment of its own (issue 32's other
half); until it is, the loop below stands in for its `hf` backend.

Our figure is the wall time from creating the job to its completion (every row answered and
graded, results on disk) over `--rows`; the job sends `--concurrency` rows at once and the
engine decodes them together (its `max_batch_size` set to the same).

Run: .venv/bin/python benchmarks/eval_rows.py [--home DIR] [--rows 64] [--tokens 32]
     [--concurrency 16] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from inference import MODEL, _serve, _timed, _wait, run_config
from settings import bundled_model

PORT = 8391


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
        data = [{"input_query": q, "expected_answer": "blue"} for q in questions(rows)]
        source = {"type": "rows", "rows": data}
        body = {"dataset_id": "bench-rows", "purpose": "eval/question-answer", "source": source}
        http.post("/v1/datasets", json=body).raise_for_status()
        grader = {
            "type": "string_check",
            "name": "says",
            "input": "{{sample.output_text}}",
            "reference": "{{item.expected_answer}}",
            "operation": "ilike",
        }
        bench = {"benchmark_id": "bench", "dataset_id": "bench-rows", "graders": [grader]}
        http.post("/v1/evaluation/benchmarks", json=bench).raise_for_status()
        job = {
            "benchmark_id": "bench",
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


def measure_hf(folder: Path, rows: int, tokens: int, batch_size: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions(rows)
    ]

    def run() -> None:
        for i in range(0, rows, batch_size):
            batch = tokenizer(
                prompts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    return rows / _timed(run)


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
    hf = measure_hf(folder, args.rows, args.tokens, args.batch_size)
    print(json.dumps({"evaluation_job_rows_per_s": ours, "hf_generate_rows_per_s": hf}))


if __name__ == "__main__":
    main()
