"""Finding and loading model folders: local Hugging Face folders, GGUF files, LoRA adapters."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from llama_post.apis.models import (
    AdapterSource,
    GGUFSource,
    HuggingFaceSource,
    ModelSource,
    ProviderModelSource,
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
    if not isinstance(source, ProviderModelSource):  # an archive: the registry unpacks it first
        raise InvalidRequestError(f"source.type: {source.type} is unpacked before loading")
    raise NotFoundError(  # it has no upstream, so it serves no upstream's model
        f"source.provider_model_id: this provider loads weights itself and serves no "
        f"{source.provider_model_id!r} of an upstream; give a huggingface, gguf or adapter source",
        param="source.provider_model_id",
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
    """A folder without the file that makes it `what` holds no such thing: not found."""
    if not path.exists():
        raise NotFoundError(f"{field}: {path.parent} is not {what}", param=field)


def load_base(folder: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.to(device)
    model.eval()
    return model, tokenizer
