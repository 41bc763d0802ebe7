"""What constrained decoding costs per token, without a model: llama-post's `Guide` (llguidance's
mask, applied to one row of logits) on a model's tokenizer, for a JSON schema whose one string
cannot end, fed 128 tokens (each the argmax of random logits under the mask: text as varied as
it gets), twice over the same compiled schema. Wall and thread CPU time, median and mean.

Run: .venv/bin/python benchmarks/grammar_mask.py MODEL_FOLDER [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 100_000}},
    "required": ["story"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a Hugging Face folder with a tokenizer")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoTokenizer

    from providers.inline.inference.transformers.guided import Constraint, Grammars

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    vocab = len(tokenizer)
    grammars = Grammars(tokenizer, vocab, frozenset({tokenizer.eos_token_id}))
    started = time.perf_counter()
    grammars.tokenizer()
    print(f"llguidance tokenizer: {(time.perf_counter() - started) * 1e3:.0f} ms")
    started = time.perf_counter()
    compiled = grammars.compile(Constraint("json", "json_schema", json.dumps(SCHEMA)))
    print(f"compile: {(time.perf_counter() - started) * 1e3:.1f} ms")
    for run in (1, 2):
        torch.manual_seed(0)
        guide = grammars.guide(compiled)
        wall, cpu = [], []
        for _ in range(args.tokens):
            logits = torch.randn(vocab)
            start, start_cpu = time.perf_counter(), time.thread_time()
            guide.mask(logits)
            cpu.append(time.thread_time() - start_cpu)
            wall.append(time.perf_counter() - start)
            guide.accept(int(torch.argmax(logits)))
        print(
            f"pass {run}: mask a token, wall median {statistics.median(wall) * 1e3:.2f} ms, "
            f"mean {statistics.mean(wall) * 1e3:.2f} ms; thread CPU median "
            f"{statistics.median(cpu) * 1e3:.2f} ms, mean {statistics.mean(cpu) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
