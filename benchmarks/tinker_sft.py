"""LoRA SFT through Tinker's API against the same rows as a native SFT job, in one run.

Both train the bundled SmolLM2-135M-Instruct (fp32) on tinker-cookbook 0.6.1's own
`example_data/conversations.jsonl`, on the assistant turns, LoRA rank 32 on every attention and
MLP projection and the output head, the same batch size, learning rate and number of steps:

- Tinker: the cookbook's own supervised loop, `tinker_cookbook/recipes/sl_loop.py`, unchanged,
  run in the pinned SDK's environment (the tests' `tinker-0.38` client environment) against the
  server's training sessions. Its model name is one the cookbook knows
  (`Qwen/Qwen3-4B-Instruct-2507`, ChatML, as SmolLM2's template is), registered on the server
  over SmolLM2's folder; its hub names resolve to local folders of the working directory, as in
  `tests/compat/tinker_cookbook_flow.py`.
- native: a `supervised-fine-tune` job of the server's `inline::peft` on a `dialog` dataset of
  the same rows, unshuffled, with activation checkpointing off (a session's worker keeps its
  activations too).

Reported, over the steps after the first `--warmup`: tokens per second (the loop's `num_tokens`
over its `time_total`, which includes each step's round trips; the job's `tokens` over its
`step_seconds`), their ratio, and the load average seen before and after.

Run: .venv/bin/python benchmarks/tinker_sft.py [--home DIR] [--steps 6] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "Qwen/Qwen3-4B-Instruct-2507"
PORT = 8391
LR, RANK, MAX_LENGTH = 1e-4, 32, 512


def cookbook(url: str, model: str, work: str, batch: int, steps: int) -> None:
    """In the client environment: the cookbook's loop, its metrics in `work/sl-loop`."""
    import importlib.resources

    from tinker_cookbook.recipes import sl_loop

    os.chdir(work)
    Path(ALIAS).parent.mkdir(parents=True, exist_ok=True)
    Path(ALIAS).symlink_to(model)
    data = Path("HuggingFaceH4/no_robots")
    data.mkdir(parents=True)
    rows = importlib.resources.files("tinker_cookbook") / "example_data" / "conversations.jsonl"
    (data / "train.jsonl").write_text(rows.read_text())
    config = sl_loop.Config(
        base_url=url,
        log_path=str(Path(work) / "sl-loop"),
        model_name=ALIAS,
        batch_size=batch,
        learning_rate=LR,
        max_length=MAX_LENGTH,
        lora_rank=RANK,
        save_every=0,
        max_steps=steps,
    )
    sl_loop.main(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from settings import bundled_model

    from tests.compat.envs import client_python

    folder = bundled_model(args.home)
    python = client_python("tinker-0.38")
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "LLAMA_POST_HOME": str(args.home),
            "LLAMA_POST_PORT": str(PORT),
            "LLAMA_POST_MODEL_DIR": str(folder.parent),
        }
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "llama_post", "run", str(ROOT / "run.yaml")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{PORT}"
        try:
            _wait(url, server)
            tinker = _tinker(url, python, folder, Path(tmp), args)
            native = _native(url, python, Path(tmp), args)
        finally:
            server.terminate()
            server.wait(60)
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{'run':<34} {'tokens/s':>9}")
    print(f"{'Tinker API, cookbook sl_loop':<34} {tinker:>9.1f}")
    print(f"{'native SFT job':<34} {native:>9.1f}")
    print(f"Tinker over native: {tinker / native:.2f}x tokens/s")
    print(json.dumps({"tinker_tokens_per_second": tinker, "native_tokens_per_second": native}))


def _tinker(url: str, python: Path, folder: Path, tmp: Path, args: Any) -> float:
    import httpx

    source = {"type": "huggingface", "path": str(folder)}
    made = httpx.post(f"{url}/v1/models", json={"model_id": ALIAS, "source": source}, timeout=300)
    if made.status_code != 409:  # registered by an earlier run
        made.raise_for_status()
    work = tmp / "cookbook"
    work.mkdir()
    env = {
        **os.environ,
        "TINKER_API_KEY": "tml-benchmark",
        "TINKER_TELEMETRY": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),
        "PYTHONPATH": str(ROOT / "benchmarks"),
    }
    code = (
        "import sys, tinker_sft; "
        f"tinker_sft.cookbook({url!r}, {str(folder)!r}, {str(work)!r}, {args.batch}, {args.steps})"
    )
    subprocess.run([python, "-c", code], env=env, check=True)
    lines = (work / "sl-loop" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    timed = rows[args.warmup :]
    return sum(r["num_tokens"] for r in timed) / sum(r["time_total"] for r in timed)


def _native(url: str, python: Path, tmp: Path, args: Any) -> float:
    import httpx

    read = (
        "import importlib.resources as r; "
        "print((r.files('tinker_cookbook') / 'example_data' / 'conversations.jsonl').read_text())"
    )
    rows = subprocess.run([python, "-c", read], capture_output=True, text=True, check=True)
    data = [json.loads(line) for line in rows.stdout.splitlines() if line.strip()]
    http = httpx.Client(base_url=url, timeout=120)
    name = f"conversations-{int(time.time())}"
    body = {"dataset_id": name, "purpose": "dialog", "source": {"type": "rows", "rows": data}}
    http.post("/v1/datasets", json=body).raise_for_status()
    job = http.post(
        "/v1/post-training/supervised-fine-tune",
        json={
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "training_config": {
                "n_epochs": 1,
                "max_steps_per_epoch": args.steps,
                "data_config": {
                    "dataset_id": name,
                    "batch_size": args.batch,
                    "shuffle": False,
                    "max_seq_len": MAX_LENGTH,
                },
                "optimizer_config": {"lr": LR},
                "efficiency_config": {"enable_activation_checkpointing": False},
                "dtype": "fp32",  # as a session's worker computes
            },
            "algorithm_config": {
                "type": "LoRA",
                "rank": RANK,
                "alpha": RANK,
                "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "apply_lora_to_mlp": True,
                "apply_lora_to_output": True,
            },
        },
    )
    job.raise_for_status()
    uuid = job.json()["job_uuid"]
    while (status := http.get(f"/v1/post-training/jobs/{uuid}").json()["status"]) not in (
        "completed",
        "failed",
        "cancelled",
    ):
        time.sleep(1)
    if status != "completed":
        sys.exit(f"the native job {uuid} {status}")
    metrics = http.get(f"/v1/post-training/jobs/{uuid}/metrics").json()["data"]
    timed = [m for m in metrics if m["step"] > args.warmup]
    return sum(m["tokens"] for m in timed) / sum(m["step_seconds"] for m in timed)


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited; see its log")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


if __name__ == "__main__":
    main()
