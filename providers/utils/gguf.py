"""GGUF files made into Hugging Face folders, once per file: transformers' `gguf_file=` support
dequantizes the weights and rebuilds the tokenizer. Every provider that serves a GGUF source (in
its own engine, or through vLLM) uses the same converted folder."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)


def converted_gguf(gguf: Path, cache_dir: Path) -> Path:
    """The Hugging Face folder made from `gguf`, converting it the first time only."""
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    target = cache_dir / f"{gguf.stem}-{digest.hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Servers starting together on one home convert once: the others wait here, then find the
    # finished folder. The lock is the kernel's, so a converter that dies releases it.
    with FileLock(target.with_name(target.name + ".lock")):
        if (target / "config.json").is_file():
            return target
        log.info(
            "converting %s to a Hugging Face folder in %s (once; later starts reuse it)",
            gguf.name,
            target,
        )
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by a converter that died
        shutil.rmtree(target, ignore_errors=True)  # a folder without config.json is no model
        _convert(gguf, staging)
        staging.replace(target)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader marks the model as quantized, which save_pretrained refuses; the weights
    # are already dequantized, so move them into a plain model of the same config.
    config = type(quantized.config).from_dict(
        {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    )
    plain: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
