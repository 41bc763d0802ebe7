"""Where the Makefile builds a heavy engine's own environment (`make engine-<name>`): under the
engines cache (`LLAMA_POST_ENGINES`, else ~/.cache/llama-post/engines), in a folder named after
the hash of the engine's lock, so a changed lock is a new environment."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: requirements/ and the Makefile


def engines_dir() -> Path:
    return Path(os.environ.get("LLAMA_POST_ENGINES") or Path.home() / ".cache/llama-post/engines")


def engine_env(name: str) -> Path | None:
    """The environment `make engine-<name>` builds from this checkout's lock (None without
    one), whether or not it is built yet."""
    lock = ROOT / "requirements" / "engines" / f"{name}.txt"
    if not lock.is_file():
        return None
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    return engines_dir() / f"{name}-{digest}"


def is_built(env: Path) -> bool:
    return (env / ".installed").is_file() and (env / "bin" / "python").exists()
