"""Inference throughput and latency: llama-post's servers against vLLM and plain transformers,
and the one-request decode rate against the machine's memory bound, measured in the same run.

All run SmolLM2-135M-Instruct (the embedded default's model, the same weights) on this machine,
one after the other in one run:

- llama-post on the embedded distribution (`inline::transformers`; run.yaml with its inference
  provider's `dtype` set to `--dtype`);
- vLLM (its CPU build, from its own environment: `make engine-vllm`), asked directly;
- llama-post on `distributions/vllm.yaml` (`remote::vllm`) in front of that same vLLM;
- plain transformers `generate()` in this process, in the dtype our server computes in.

`--dtype` (float32, bfloat16, auto; default auto) is what our server is given, and the
transformers baseline computes in the dtype the server then reports for the model (GET
/v1/models/ID, `dtype`); auto is the server's pick (llama-post's rule,
`providers/utils/precision.py`: bf16 where the device computes it faster; a server that does
not report its dtype is taken to have followed that rule). vLLM computes in float32 (its launch
command's `--dtype float32`).

Each server gets one request of 128 new tokens (time to first token, output tokens per second)
and 8 requests of 128 new tokens at once over HTTP; ours also one request constrained by a JSON
schema (`response_format`; a string whose `minLength` outlasts the tokens, so it runs to the end)
against the same request free, the best of 3 each: the cost per token of constrained decoding.
Plain transformers serves the 8 one after another (a naive server) and as one padded batch (the
best case for a static batch).

The bound: a decode step of one request reads every weight once, so it cannot run faster than
memory bandwidth / bytes of weights (parameters x bytes per element of the dtype; SmolLM2's tied
embedding read once, as the head; `bounds.py` documents the count). The bandwidth (and the fp32
and bf16 matmul peaks, for the record) are measured before and after the servers, the better
figure kept. Each column's one-request tokens/s is printed as a fraction of its dtype's bound.

Run: .venv/bin/python benchmarks/inference.py [--home DIR] [--tokens 128] [--requests 8]
     [--dtype auto|float32|bfloat16]
     [--vllm-env DIR]   (default: what `make -s engine-vllm` prints; `--no-vllm` skips it)
     [--constrained-only]  (our server's constrained and free request, nothing else)
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

import bounds
import httpx
from settings import bundled_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER = "bench/lora-adapter"
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
    parser.add_argument("--vllm-env", type=Path, help="vLLM's environment")
    parser.add_argument("--no-vllm", action="store_true", help="leave vLLM out")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="our server's inference dtype, and the transformers baseline's (auto: what the "
        "server picks)",
    )
    parser.add_argument(
        "--constrained-only",
        action="store_true",
        help="only our server's JSON-schema-constrained request against the same one free",
    )
    args = parser.parse_args()
    if args.constrained_only:
        with tempfile.TemporaryDirectory() as tmp:
            print_constrained(measure_constrained(args.home, Path(tmp), args.tokens, args.dtype))
        return
    machine = bounds.measure()
    print(bounds.describe(machine), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ours, reported = measure_server(
            args.home, Path(tmp), args.tokens, args.requests, args.dtype
        )
        dtype, why = (reported, "as the server reports") if reported else server_dtype(args.dtype)
        print(f"dtype {args.dtype}: our server and transformers compute in {dtype} ({why})")
        folder = bundled_model(args.home)
        served = {"inline::transformers": ours}
        if not args.no_vllm:
            env = args.vllm_env or _vllm_environment()
            served.update(measure_vllm(env, folder, Path(tmp), args.tokens, args.requests))
    plain = measure_plain(folder, args.tokens, args.requests, dtype)
    machine = bounds.best(machine, bounds.measure())
    print(bounds.describe(machine) + " (the better of before and after)")

    model = bounds.Decoder.from_folder(folder)
    vllm = "float32"  # launch.command's --dtype
    dtypes = {"inline::transformers": dtype, "remote::vllm": vllm, "vLLM": vllm}
    dtypes = {n: d for n, d in dtypes.items() if n in served} | {"transformers": dtype}
    bound = {
        d: machine["bandwidth_gbs"] * 1e9 / model.decode_bytes(d) for d in set(dtypes.values())
    }
    for d, steps in sorted(bound.items()):
        print(
            f"decode bound, {d}: {model.decode_bytes(d) / 1e6:.0f} MB of weights a step "
            f"({model.parameters:,} parameters) at {machine['bandwidth_gbs']:.1f} GB/s: "
            f"{steps:.1f} steps/s"
        )

    names = list(served)
    print(f"\n{'measure':<40}" + "".join(f"{n:>22}" for n in [*names, "transformers"]))
    for key, label in (
        ("ttft", "1 request: time to first token (s)"),
        ("single_tps", "1 request: output tokens/s"),
        ("concurrent_tps", f"{args.requests} requests at once: tokens/s"),
    ):
        theirs = plain[key] if key != "concurrent_tps" else plain["sequential_tps"]
        print(
            f"{label:<40}" + "".join(f"{served[n][key]:>22.3f}" for n in names) + f"{theirs:>22.3f}"
        )
    print(
        f"{'1 request: fraction of decode bound':<40}"
        + "".join(f"{served[n]['single_tps'] / bound[dtypes[n]]:>22.3f}" for n in names)
        + f"{plain['single_tps'] / bound[dtype]:>22.3f}"
    )
    print(f"{'transformers, one padded batch: tokens/s':<40}{plain['batch_tps']:>22.3f}")
    print(
        "\nratios (tokens/s: the first over the second; time to first token: the second over "
        "the first)"
    )
    pairs = [("inline::transformers", "transformers")]
    if "vLLM" in served:
        pairs += [("remote::vllm", "vLLM"), ("inline::transformers", "vLLM")]
    for a, b in pairs:
        first = served[a]
        second = (
            served[b]
            if b in served
            else {
                "ttft": plain["ttft"],
                "single_tps": plain["single_tps"],
                "concurrent_tps": plain["sequential_tps"],
            }
        )
        print(
            f"  {a} / {b}: time to first token {second['ttft'] / first['ttft']:.2f}x, "
            f"1 request {first['single_tps'] / second['single_tps']:.2f}x, "
            f"{args.requests} at once {first['concurrent_tps'] / second['concurrent_tps']:.2f}x"
        )
    print(
        f"  inline::transformers, {args.requests} at once / transformers' one padded batch: "
        f"{ours['concurrent_tps'] / plain['batch_tps']:.2f}x (target 0.9x)"
    )
    print_constrained(ours)
    print(
        f"  unmerged LoRA adapter / its base, inline::transformers: 1 request "
        f"{ours['adapter_single_tps'] / ours['single_tps']:.2f}x, {args.requests} at once "
        f"{ours['adapter_concurrent_tps'] / ours['concurrent_tps']:.2f}x (target 0.9x); "
        f"1 request of the base: {ours['single_tps'] / bound[dtype]:.3f} of the decode bound "
        "(target 0.7)"
    )
    print(
        json.dumps(
            {
                "dtype": dtype,
                "machine": machine,
                "decode_bound_steps_per_second": bound,
                "served": served,
                "transformers": plain,
            }
        )
    )


def server_dtype(requested: str) -> tuple[str, str]:
    """The dtype a server that does not report it computes in when given `requested`, and why:
    a named one is itself; auto is llama-post's rule for the device the server picks (CUDA when
    present), or, where that rule is not there, the provider's old one (bfloat16 on CUDA,
    float32 on a CPU)."""
    import torch

    sys.path.insert(0, str(ROOT))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if requested != "auto":
        return requested, "asked for"
    try:
        from providers.utils.precision import choose
    except ImportError:
        return ("bfloat16" if device == "cuda" else "float32"), f"auto on {device}"
    choice = choose("auto", device)
    return {"fp32": "float32", "bf16": "bfloat16"}[choice.precision], choice.why


def measure_vllm(
    env: Path, folder: Path, tmp: Path, tokens: int, requests: int
) -> dict[str, dict[str, float]]:
    """vLLM on the same weights, asked directly and through llama-post's remote::vllm."""
    sys.path.insert(0, str(ROOT))
    from providers.remote.inference.vllm.launch import command, environment

    port = 8391
    argv = command(env, folder, MODEL, port=port, max_model_len=2048)
    with (tmp / "vllm.log").open("wb") as log:
        vllm = subprocess.Popen(argv, env=environment(), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}", vllm, health="/v1/models")
        direct = asyncio.run(_measure(f"http://127.0.0.1:{port}", tokens, requests))
        front_env = {
            **os.environ,
            "LLAMA_POST_HOME": str(tmp / "front"),
            "LLAMA_POST_PORT": "8392",
            "VLLM_URL": f"http://127.0.0.1:{port}",
        }
        front = _serve(ROOT / "distributions/vllm.yaml", front_env, tmp / "front.log")
        try:
            _wait("http://127.0.0.1:8392", front)
            remote = asyncio.run(_measure("http://127.0.0.1:8392", tokens, requests))
            # vLLM again, after: the better of its two runs, so that neither warm-up order nor
            # the idle front server counts against it.
            again = asyncio.run(_measure(f"http://127.0.0.1:{port}", tokens, requests))
        finally:
            front.terminate()
            front.wait(30)
    finally:
        vllm.terminate()
        vllm.wait(60)
    best = {
        "ttft": min(direct["ttft"], again["ttft"]),
        "single_tps": max(direct["single_tps"], again["single_tps"]),
        "concurrent_tps": max(direct["concurrent_tps"], again["concurrent_tps"]),
    }
    return {"remote::vllm": remote, "vLLM": best}


def _vllm_environment() -> Path:
    out = subprocess.run(
        ["make", "-s", "engine-vllm"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def measure_server(
    home: Path, tmp: Path, tokens: int, requests: int, dtype: str
) -> tuple[dict[str, float], str | None]:
    """Our server's figures, and the dtype it reports computing the model in (None if it does
    not say)."""
    port = 8390
    adapter = build_adapter(bundled_model(home), tmp / "local")
    env = {
        **os.environ,
        "LLAMA_POST_HOME": str(home),
        "LLAMA_POST_PORT": str(port),
        "LLAMA_POST_MAX_BATCH": str(max(8, requests)),
        "LLAMA_POST_MODEL_DIR": str(tmp / "local"),
    }
    proc = _serve(run_config(tmp, dtype), env, tmp / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc)
        figures = asyncio.run(_measure(url, tokens, requests))
        model = httpx.get(f"{url}/v1/models/{MODEL}", timeout=30).json()
        registered = httpx.post(
            f"{url}/v1/models",
            json={
                "model_id": ADAPTER,
                "source": {"type": "adapter", "path": str(adapter), "base_model": MODEL},
            },
            timeout=120,
        )
        registered.raise_for_status()
        served = asyncio.run(_measure(url, tokens, requests, model=ADAPTER))
        figures |= {f"adapter_{k}": v for k, v in served.items()}
        figures |= asyncio.run(_constrained(url, tokens))
    finally:
        proc.terminate()
        proc.wait(30)
    names = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    return figures, names.get(model.get("dtype") or "")


def measure_constrained(home: Path, tmp: Path, tokens: int, dtype: str) -> dict[str, float]:
    """Our server alone: one request constrained by a JSON schema against the same one free."""
    port = 8390
    env = {**os.environ, "LLAMA_POST_HOME": str(home), "LLAMA_POST_PORT": str(port)}
    proc = _serve(run_config(tmp, dtype), env, tmp / "server.log")
    try:
        _wait(f"http://127.0.0.1:{port}", proc)
        return asyncio.run(_constrained(f"http://127.0.0.1:{port}", tokens))
    finally:
        proc.terminate()
        proc.wait(30)


# A JSON object whose one string cannot end within the tokens asked for: every token is masked.
LONG_STORY = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 100_000}},
    "required": ["story"],
}


async def _constrained(url: str, tokens: int) -> dict[str, float]:
    """Output tokens/s of one request constrained by a JSON schema, and of the same request
    free; the best of 3 each, taken in turns."""
    schema = {"type": "json_schema", "json_schema": {"name": "story", "schema": LONG_STORY}}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _ask(client, QUESTIONS[0], 2, False, response_format=schema)  # compiled, cached
        free, constrained = [], []
        for _ in range(3):
            free.append(await _ask(client, QUESTIONS[0], tokens, False))
            constrained.append(
                await _ask(client, QUESTIONS[0], tokens, False, response_format=schema)
            )
    return {
        "free_single_tps": tokens / min(free),
        "constrained_single_tps": tokens / min(constrained),
    }


def print_constrained(figures: dict[str, float]) -> None:
    free, constrained = figures["free_single_tps"], figures["constrained_single_tps"]
    print(
        f"  JSON-schema-constrained / free, inline::transformers, 1 request: {constrained:.1f} / "
        f"{free:.1f} tokens/s = {constrained / free:.2f}x"
    )


def run_config(tmp: Path, dtype: str) -> Path:
    """run.yaml, its inline::transformers provider given `dtype`, written to `tmp`."""
    import yaml

    config = yaml.safe_load((ROOT / "run.yaml").read_text())
    for provider in config["providers"]["inference"]:
        if provider["provider_type"] == "inline::transformers":
            provider["config"]["dtype"] = dtype
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_adapter(base: Path, out: Path) -> Path:
    """An unmerged LoRA adapter (rank 8 on q and v, random weights) over the base: what a
    fine-tune gives, served over its base without merging."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(str(out / "adapter"))
    return out / "adapter"


async def _measure(url: str, tokens: int, requests: int, model: str = "") -> dict[str, float]:
    model = model or MODEL
    # One client with a connection per request, made before the clock starts.
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(
            *(_ask(client, QUESTIONS[i % len(QUESTIONS)], 2, False, model) for i in range(requests))
        )  # warm up, open the connections
        ttft = min([await _ask(client, QUESTIONS[0], 1, True, model) for _ in range(7)])
        # Best of 3 and of 2: two cores shared with the machine's other work are noisy.
        single = tokens / min(
            [await _ask(client, QUESTIONS[0], tokens, False, model) for _ in range(3)]
        )
        rounds = []
        for _ in range(2):
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    _ask(client, QUESTIONS[i % len(QUESTIONS)], tokens, False, model)
                    for i in range(requests)
                )
            )
            rounds.append(time.perf_counter() - start)
        concurrent = requests * tokens / min(rounds)
    return {"ttft": ttft, "single_tps": single, "concurrent_tps": concurrent}


async def _ask(
    client: httpx.AsyncClient,
    question: str,
    tokens: int,
    stream: bool,
    model: str = MODEL,
    response_format: dict[str, Any] | None = None,
) -> float:
    """Seconds until the whole answer (or, streaming, its first token) has arrived."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "temperature": 0,
        "top_p": 1.0,  # set, so no server fills in a model's own default (vllm.yaml gives 0.5)
        "ignore_eos": True,
        "stream": stream,
    }
    if response_format is not None:
        body["response_format"] = response_format
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


def _serve(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`llama-post run CONFIG` in its own process, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llama_post", "run", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(url: str, proc: subprocess.Popen[bytes], health: str = "/v1/health") -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited; see its log")
        try:
            if httpx.get(f"{url}{health}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def measure_plain(folder: Path, tokens: int, requests: int, dtype: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    model.eval()

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
