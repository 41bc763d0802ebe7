"""What the training benchmarks share: each setting runs in a process of its own, so that its
peak RSS is its own, and reports one JSON line."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
