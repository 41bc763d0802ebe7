"""Virtual environments holding other releases of the client SDKs, for the compatibility tests.

Each is made once under `.venv-compat/<name>` from `pins/<name>.txt`, the hashed lock of
`pins/<name>.in` that `make lock` writes, with the interpreter the release needs, and made again
when its lock changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / ".venv-compat"
PINS = Path(__file__).parent / "pins"


def client_python(name: str, interpreter: str = sys.executable) -> Path:
    """The Python of the environment `name`, its pins installed."""
    pins = PINS / f"{name}.txt"
    folder = ENVS / name
    stamp, python = folder / ".pins", folder / "bin" / "python"
    if python.is_file() and stamp.is_file() and stamp.read_text() == pins.read_text():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([interpreter, "-m", "venv", str(folder)], check=True)
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "-r",
            pins,
        ],
        check=True,
    )
    stamp.write_text(pins.read_text())
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


def run_flow(python: Path, script: str, *args: str, timeout: float = 280) -> str:
    """Run a flow script of this folder; its last line of output is its JSON report."""
    done = subprocess.run(
        [python, str(Path(__file__).parent / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout.strip().splitlines()[-1]
