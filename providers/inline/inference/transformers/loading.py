"""Finding and loading model folders: local Hugging Face folders, GGUF files, LoRA adapters."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock

from llama_post.apis.models import (
    AdapterSource,
    GGUFSource,
    HuggingFaceSource,
    ModelSource,
    SamplingDefaults,
)
from llama_post.errors import InvalidRequestError, NotFoundError
from llama_post.storage import resolve_under

log = logging.getLogger(__name__)


def source_path(source: ModelSource, model_dirs: list[Path]) -> Path:
    """The local file or folder a source names, checked to lie where the provider may read."""
    if isinstance(source, HuggingFaceSource):
        folder = resolve_under(source.path, model_dirs, "source.path", kind="dir")
        _require(folder / "config.json", "source.path", "a Hugging Face model folder")
        return folder
    if isinstance(source, AdapterSource):
        folder = resolve_under(source.path, model_dirs, "source.path", kind="dir")
        _require(folder / "adapter_config.json", "source.path", "a PEFT adapter folder")
        return folder
    if isinstance(source, GGUFSource):
        return _gguf_file(source, model_dirs)
    raise InvalidRequestError(
        f"source.type: {source.type!r} names a model a remote upstream serves; this provider "
        "loads weights itself: give a huggingface, gguf or adapter source",
        param="source.type",
    )


def _gguf_file(source: GGUFSource, model_dirs: list[Path]) -> Path:
    if source.path is not None and source.package is None:
        return resolve_under(source.path, model_dirs, "source.path")
    if source.package is None or source.file is None or source.path is not None:
        raise InvalidRequestError(
            "source: give a GGUF `path`, or a `package` and the `file` inside it", param="source"
        )
    spec = importlib.util.find_spec(source.package)  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            f"source.package: no installed package {source.package!r}", param="source.package"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / source.file
    _require(path, "source.file", f"a file of package {source.package}")
    return path


def _require(path: Path, field: str, what: str) -> None:
    if not path.exists():
        raise InvalidRequestError(f"{field}: {path.parent} is not {what}", param=field)


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


def recommended_sampling(folder: Path) -> SamplingDefaults:
    """The sampling knobs the model's authors wrote into its generation_config.json (vLLM reads
    the same file for its defaults); values outside the API's ranges are ignored."""
    try:
        written = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        return SamplingDefaults()
    found = {}
    for name in SamplingDefaults.model_fields:
        try:
            value = written.get(name)
            if value is not None:
                found[name] = SamplingDefaults.model_validate({name: value}).__dict__[name]
        except ValueError:
            log.warning("%s/generation_config.json: %s=%r is ignored", folder, name, value)
    return SamplingDefaults.model_validate(found)


def load_base(folder: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.to(device)
    model.eval()
    return model, tokenizer
