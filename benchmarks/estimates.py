"""How close estimates come to reality: for several settings of SmolLM2-135M-Instruct (LoRA and
full fine-tuning, activation checkpointing on and off, two sequence lengths), ask the server's
`POST /v1/post-training/estimate`, then run the same job, and compare the estimated peak memory
and wall time with the worker's measured peak RSS and its running time.

The server is llama-post on run.yaml (`LLAMA_POST_HOME` = `--home`, where the bundled model is
converted the first time and cached), on a loopback port; each setting's estimate is calibrated
afresh (its own cache). Reported per setting: estimated and measured peak memory and wall time,
and their ratios (estimate / reality). Targets on CPU: memory within 25%, time within 35%.

Run: .venv/bin/python benchmarks/estimates.py --home /tmp/bench-home [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from settings import bundled_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SETTINGS = [  # (algorithm, activation checkpointing, words per answer)
    ("LoRA", True, 40),
    ("LoRA", False, 40),
    ("LoRA", True, 120),
    ("LoRA", False, 120),
    ("full", True, 40),
    ("full", False, 40),
    ("full", True, 120),
    ("full", False, 120),
]
WORDS = [
    "river",
    "mountain",
    "quietly",
    "sudden",
    "lantern",
    "ocean",
    "harvest",
    "violet",
    "engine",
    "marble",
]


def rows(count: int, words: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "prompt": f"Write about {rng.choice(WORDS)} number {i}.",
            "completion": " ".join(rng.choice(WORDS) for _ in range(words)),
        }
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--home", required=True, help="LLAMA_POST_HOME, where the bundled model is converted"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        model = bundled_model(Path(args.home))
        shutil.copytree(model, home / "models" / model.name)  # the converted model
        env = {**os.environ, "LLAMA_POST_HOME": str(home), "LLAMA_POST_PORT": str(port)}
        log = (Path(tmp) / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_post", "run", str(ROOT / "run.yaml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(url, server)
            results = [_measure(url, setting, args.steps, args.batch) for setting in SETTINGS]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    print(
        f"{'setting':32} {'est MiB':>8} {'real MiB':>8} {'ratio':>6} "
        f"{'est s':>7} {'real s':>7} {'ratio':>6}"
    )
    for r in results:
        print(
            f"{r['name']:32} {r['est_mem'] / 2**20:8.0f} {r['real_mem'] / 2**20:8.0f} "
            f"{r['est_mem'] / r['real_mem']:6.2f} {r['est_s']:7.1f} {r['real_s']:7.1f} "
            f"{r['est_s'] / r['real_s']:6.2f}"
        )
    worst_mem = max(abs(r["est_mem"] / r["real_mem"] - 1) for r in results)
    worst_time = max(abs(r["est_s"] / r["real_s"] - 1) for r in results)
    print(f"worst: memory {worst_mem:.0%} off (target 25%), time {worst_time:.0%} off (target 35%)")


def _measure(url: str, setting: tuple[str, bool, int], steps: int, batch: int) -> dict[str, Any]:
    algorithm, checkpointing, words = setting
    name = f"{algorithm} ckpt={'on' if checkpointing else 'off'} answer={words}w"
    dataset = f"est-{algorithm.lower()}-{int(checkpointing)}-{words}"
    made = httpx.post(
        f"{url}/v1/datasets",
        json={
            "dataset_id": dataset,
            "purpose": "instruct",
            "source": {"type": "rows", "rows": rows(steps * batch, words, seed=words)},
        },
        timeout=60,
    )
    made.raise_for_status()
    body: dict[str, Any] = {
        "model": MODEL,
        "training_config": {
            "n_epochs": 1,
            "data_config": {"dataset_id": dataset, "batch_size": batch, "max_seq_len": 512},
            "efficiency_config": {"enable_activation_checkpointing": checkpointing},
        },
        "algorithm_config": {"type": "LoRA", "rank": 8, "alpha": 16}
        if algorithm == "LoRA"
        else {"type": "full"},
    }
    estimate = httpx.post(f"{url}/v1/post-training/estimate", json=body, timeout=900)
    estimate.raise_for_status()
    figures = estimate.json()
    job = httpx.post(f"{url}/v1/post-training/supervised-fine-tune", json=body, timeout=900)
    job.raise_for_status()
    job_uuid = job.json()["job_uuid"]
    while True:
        status = httpx.get(f"{url}/v1/post-training/jobs/{job_uuid}", timeout=60).json()
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.5)
    if status["status"] != "completed":
        sys.exit(f"{name}: {status['status']}: {status['error']}")
    (attempt,) = status["attempts"]
    result = {
        "name": name,
        "est_mem": figures["memory"]["peak"],
        "real_mem": status["progress"]["peak_memory_bytes"],
        "est_s": figures["wall_seconds"],
        "real_s": attempt["ended_at"] - attempt["started_at"],
    }
    print(name, result, flush=True)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("the server exited")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit("the server did not start")


if __name__ == "__main__":
    main()
