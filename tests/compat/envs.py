"""Virtual environments holding other releases of the client SDKs, for the compatibility tests.

Each is built once from `pins/<name>.txt`, the hashed lock of `pins/<name>.in` that `make lock`
writes, with the interpreter the release needs, into a cache outside the clone (beside the
engines' environments: `$LLAMA_POST_CLIENTS`, else `~/.cache/llama-post/clients`), in a folder
named after the lock's hash and the interpreter's version: every clone and CI run reuses it while
the lock is unchanged. uv (the Makefile's, in `.tools/`) syncs it to the lock exactly, hashes
checked, with `pins/<name>.nodeps.txt` beside it where there is one (packages installed without
their requirements, as the Makefile's `requirements/nodeps.txt`) and this machine's local wheels
(`/opt/wheels`: torch's CPU build). pip's `--require-hashes` refuses a complete lock whose
packages declare extras (tinker's `httpx[http2]`) once a newer release of the extra's package
exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINS = Path(__file__).parent / "pins"
UV = ROOT / ".tools" / "bin" / "uv"
# Where this machine kind keeps the CPU build of torch that a lock may name (lm-eval's `hf` model
# needs torch); the Makefile reads the same folder for .venv and the engines.
WHEELS = [Path("/opt/wheels")]


def cache_root() -> Path:
    explicit = os.environ.get("LLAMA_POST_CLIENTS")
    return Path(explicit) if explicit else Path.home() / ".cache" / "llama-post" / "clients"


def client_python(name: str, interpreter: str = sys.executable) -> Path:
    """The Python of the environment `name`, its pins installed (built once, then reused)."""
    pins = [PINS / f"{name}.txt"]
    pins += [p for p in [PINS / f"{name}.nodeps.txt"] if p.is_file()]
    version = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in pins)).hexdigest()[:12]
    folder = cache_root() / f"{name}-py{version}-{digest}"
    python = folder / "bin" / "python"
    if (folder / ".installed").is_file() and python.is_file():
        if not (folder / ".compiled").is_file():  # built before installs compiled their bytecode
            subprocess.run(
                [python, "-m", "compileall", "-q", "-j", "0", folder / "lib"], capture_output=True
            )
            (folder / ".compiled").touch()
        return python
    if not UV.is_file():
        subprocess.run(["make", "-s", str(UV.relative_to(ROOT))], cwd=ROOT, check=True)
    # Staged in a folder of its own and renamed into place: a cut-off build is never taken for a
    # done one, and two test processes building the same one do not share a half-built folder.
    staging = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    uv = [str(UV), "--quiet"]
    subprocess.run([*uv, "venv", "--relocatable", "--python", interpreter, staging], check=True)
    subprocess.run(
        [
            *uv,
            "pip",
            "sync",
            "--python",
            staging / "bin" / "python",
            "--require-hashes",
            *[f"--find-links={folder}" for folder in WHEELS if folder.is_dir()],
            "--link-mode",
            "copy",
            "--compile-bytecode",  # each flow is a process of its own: no import compiles again
            *pins,
        ],
        check=True,
    )
    (staging / ".installed").touch()
    (staging / ".compiled").touch()
    try:
        staging.rename(folder)
    except OSError:  # built meanwhile by another process: keep that one
        shutil.rmtree(staging, ignore_errors=True)
    return python


def python312() -> str:
    """A CPython 3.12 (llama-stack-client 0.2.13 and later need it); pyenv's, on this machine."""
    candidates = [shutil.which("python3.12")]
    candidates += [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.startswith("Python 3.12"):
            return candidate
    pytest.skip("no CPython 3.12 on this machine (pyenv install 3.12 provides one)")


def run_flow(
    python: Path,
    script: str,
    *args: str,
    timeout: float = 240,
    env: dict[str, str] | None = None,
) -> str:
    """Run a flow script of this folder (with `env` added to the environment); its last line
    of output is its JSON report."""
    done = subprocess.run(
        [python, str(Path(__file__).parent / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout.strip().splitlines()[-1]
