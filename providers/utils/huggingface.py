"""What a Hugging Face model folder says about itself, read without loading the model: its
recommended sampling, whether it has a chat template, its parameter count. Any provider that
can read the folder (loading it, or serving it through an upstream) asks the same way."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from llama_post.apis.models import SamplingDefaults

log = logging.getLogger(__name__)


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


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


def parameter_count(folder: Path) -> int | None:
    """The parameters in the folder's safetensors files, from their headers alone."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total
