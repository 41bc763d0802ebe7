"""A GGUF export loaded by llama.cpp itself (llama-cpp-python, in an environment of its own:
`make engine-llamacpp`): the tiny model with an adapter merged into it, written as f16 and as
q8_0, tokenizes a prompt as its Hugging Face tokenizer does, carries the chat template, and
decodes greedily the same first tokens as transformers reading the same file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from providers.jobs.export_worker import merge
from providers.utils.gguf_export import write_gguf
from tests.support import engine_environment
from tests.tiny import build_tiny_adapter

PROMPTS = ["Once upon a time", "Question 3: what is a blorp? 42"]
NEW_TOKENS = 6
LLAMA_CPP = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
out = {"template": llm.metadata.get("tokenizer.chat_template"), "runs": []}
for prompt in json.loads(sys.argv[2]):
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    new = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        if len(new) == int(sys.argv[3]):
            break
        new.append(token)
    out["runs"].append({"prompt": ids, "new": new})
print(json.dumps(out))
"""


@pytest.mark.slow
def test_llama_cpp_loads_an_export_and_decodes_as_transformers_does(
    tmp_path: Path, tiny_model: Path, tokenizer: Any
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    python = engine_environment("llamacpp") / "bin" / "python"
    adapter = build_tiny_adapter(tmp_path / "adapter", tiny_model, seed=11)
    merge(tiny_model, adapter, tmp_path / "merged")
    for outtype in ("f16", "q8_0"):
        path = tmp_path / f"tiny-{outtype}.gguf"
        write_gguf(tmp_path / "merged", path, outtype, "tiny")
        done = subprocess.run(
            [str(python), "-c", LLAMA_CPP, str(path), json.dumps(PROMPTS), str(NEW_TOKENS)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert got["template"] == tokenizer.chat_template
        reader = AutoModelForCausalLM.from_pretrained(
            str(tmp_path), gguf_file=path.name, dtype=torch.float32
        )
        for prompt, run in zip(PROMPTS, got["runs"], strict=True):
            ids = tokenizer(prompt)["input_ids"]
            assert run["prompt"] == ids, prompt  # the tokenizer's metadata splits as HF does
            assert run["new"] == _greedy(reader, ids), (outtype, prompt)


def _greedy(model: Any, ids: list[int]) -> list[int]:
    """NEW_TOKENS argmax tokens, past any end token (llama.cpp's loop above does not stop)."""
    import torch

    ids = list(ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-NEW_TOKENS:]
