"""Inference throughput and latency: llama-post's server against plain transformers `generate()`.

Both run SmolLM2-135M-Instruct (the embedded default's model, the same weights) on this machine,
one after the other in one run:

- one request of 128 new tokens: time to first token and output tokens per second;
- 8 requests of 128 new tokens: our server receiving them concurrently over HTTP, against plain
  transformers serving them one after another (a naive server) and as one padded batch (the best
  case for a static batch).

Run: .venv/bin/python benchmarks/inference.py [--home DIR] [--tokens 128] [--requests 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "What makes a good cup of tea?",
    "Tell me about the history of the printing press.",
    "Why do cats purr?",
    "Give advice to someone learning to cook.",
    "Describe a walk through a forest in autumn.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=Path,
        default=Path.home() / ".llama-post",
        help="LLAMA_POST_HOME: where the converted model is cached",
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ours = measure_server(args.home, Path(tmp), args.tokens, args.requests)
    folder = next((args.home / "models").glob("SmolLM2-135M-Instruct*"))
    plain = measure_plain(folder, args.tokens, args.requests)

    rows = [
        (
            "1 request: time to first token (s)",
            ours["ttft"],
            plain["ttft"],
            plain["ttft"] / ours["ttft"],
        ),
        (
            "1 request: output tokens/s",
            ours["single_tps"],
            plain["single_tps"],
            ours["single_tps"] / plain["single_tps"],
        ),
        (
            f"{args.requests} requests: tokens/s vs one after another",
            ours["concurrent_tps"],
            plain["sequential_tps"],
            ours["concurrent_tps"] / plain["sequential_tps"],
        ),
        (
            f"{args.requests} requests: tokens/s vs one padded batch",
            ours["concurrent_tps"],
            plain["batch_tps"],
            ours["concurrent_tps"] / plain["batch_tps"],
        ),
    ]
    print(f"\n{'measure':<48} {'llama-post':>12} {'transformers':>13} {'ratio':>7}")
    for name, a, b, ratio in rows:
        print(f"{name:<48} {a:>12.3f} {b:>13.3f} {ratio:>6.2f}x")
    print("(ratio: ours over theirs for tokens/s; theirs over ours for time to first token)")
    print(json.dumps({"ours": ours, "transformers": plain}))


def measure_server(home: Path, tmp: Path, tokens: int, requests: int) -> dict[str, float]:
    port = 8390
    env = {
        **os.environ,
        "LLAMA_POST_HOME": str(home),
        "LLAMA_POST_PORT": str(port),
        "LLAMA_POST_MAX_BATCH": str(max(8, requests)),
    }
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_post", "run", str(ROOT / "run.yaml")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(f"http://127.0.0.1:{port}", proc)
        return asyncio.run(_measure(f"http://127.0.0.1:{port}", tokens, requests))
    finally:
        proc.terminate()
        proc.wait(30)


async def _measure(url: str, tokens: int, requests: int) -> dict[str, float]:
    # One client with a connection per request, made before the clock starts.
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(
            *(_ask(client, QUESTIONS[i % len(QUESTIONS)], 2, stream=False) for i in range(requests))
        )  # warm up, open the connections
        ttft = min([await _ask(client, QUESTIONS[0], 1, stream=True) for _ in range(3)])
        single = tokens / await _ask(client, QUESTIONS[0], tokens, stream=False)
        start = time.perf_counter()
        await asyncio.gather(
            *(
                _ask(client, QUESTIONS[i % len(QUESTIONS)], tokens, stream=False)
                for i in range(requests)
            )
        )
        concurrent = requests * tokens / (time.perf_counter() - start)
    return {"ttft": ttft, "single_tps": single, "concurrent_tps": concurrent}


async def _ask(client: httpx.AsyncClient, question: str, tokens: int, stream: bool) -> float:
    """Seconds until the whole answer (or, streaming, its first token) has arrived."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    start = time.perf_counter()
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        assert response.json()["usage"]["completion_tokens"] == tokens
        return time.perf_counter() - start
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("no token arrived")


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
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


def measure_plain(folder: Path, tokens: int, requests: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def encode(questions: list[str]) -> Any:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions
        ]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def generate(batch: Any, new: int) -> None:
        with torch.inference_mode():
            model.generate(
                **batch,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )

    generate(encode(QUESTIONS[:1]), 8)  # warm up
    ttft = min(_timed(lambda: generate(encode(QUESTIONS[:1]), 1)) for _ in range(3))
    single = tokens / _timed(lambda: generate(encode(QUESTIONS[:1]), tokens))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    sequential = (
        requests * tokens / _timed(lambda: [generate(encode([q]), tokens) for q in questions])
    )
    batch = requests * tokens / _timed(lambda: generate(encode(questions), tokens))
    return {"ttft": ttft, "single_tps": single, "sequential_tps": sequential, "batch_tps": batch}


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
