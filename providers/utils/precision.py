"""`dtype: auto`: compute in bf16 where the device is faster at it, fp32 elsewhere.

- CUDA: bf16 where the device supports it (`torch.cuda.is_bf16_supported()`).
- CPU: bf16 where it has AMX-BF16; otherwise a short probe times the same matrix products in
  both types and bf16 wins when it is clearly faster (AVX-512 BF16 CPUs usually are; most
  others emulate it and are slower). The probe runs once per machine: its answer is cached
  (`~/.cache/llama-post/precision.json`, or under `LLAMA_POST_CACHE`), keyed by the CPU, the
  torch version and the thread count. A probe that fails chooses fp32 and logs why.

An explicit `fp32` or `bf16` wins over the rule; `bf16` on a device that cannot compute it is
refused with the device named.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
SPEEDUP_NEEDED = 1.25  # bf16 must beat fp32 by this much to be chosen: it also costs accuracy
PROBE_SHAPES = ((1024, 1024, 1024), (2048, 576, 1536))  # square, and a SmolLM2 projection


class UnsupportedPrecision(ValueError):
    pass


@dataclass(frozen=True)
class Choice:
    precision: Precision
    why: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.precision]


def choose(requested: str, device: str, cache: Path | None = None) -> Choice:
    """The precision to compute in on `device` ("cpu", "cuda", "cuda:1") for a request of
    "auto", "fp32" or "bf16" (torch's names "float32" and "bfloat16" are read as those)."""
    requested = {"float32": "fp32", "bfloat16": "bf16"}.get(requested, requested)
    if requested == "fp32":
        return Choice("fp32", "asked for")
    if requested == "bf16":
        if not computes_bf16(device):
            raise UnsupportedPrecision(
                f"bf16: the device {device_name(device)} cannot compute bfloat16; use fp32 or auto"
            )
        return Choice("bf16", "asked for")
    if requested != "auto":
        raise UnsupportedPrecision(f"{requested}: not a precision; use auto, fp32 or bf16")
    if device.startswith("cuda"):
        if computes_bf16(device):
            return Choice("bf16", f"{device_name(device)} computes bfloat16 natively")
        return Choice("fp32", f"{device_name(device)} has no bfloat16")
    return _cpu_choice(cache or cache_file())


def computes_bf16(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True  # every CPU torch runs on computes it, fast or not


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({cpu_model()})"


def cache_file() -> Path:
    root = os.environ.get("LLAMA_POST_CACHE") or Path.home() / ".cache/llama-post"
    return Path(root) / "precision.json"


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_choice(cache: Path) -> Choice:
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return Choice("bf16", f"{cpu_model()} has AMX-BF16")
    isa = ",".join(sorted(flags & {"avx512_bf16", "avx512f", "avx2"}))
    key = f"{cpu_model()}|{isa}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    known = _read(cache)
    entry = known.get(key, {})
    if entry.get("precision") in TORCH_DTYPES:
        chosen: Precision = "bf16" if entry["precision"] == "bf16" else "fp32"
        return Choice(chosen, f"{entry.get('why')} (measured before on this machine)")
    try:
        fp32, bf16 = probe()
    except Exception as exc:  # any failure: the safe answer, said out loud
        log.warning("the bf16 probe failed (%s); computing in fp32", exc)
        return Choice("fp32", f"the bf16 probe failed: {exc}")
    speedup = bf16 / fp32
    chosen = "bf16" if speedup >= SPEEDUP_NEEDED else "fp32"
    why = (
        f"measured on {cpu_model()}: bf16 matmuls {bf16:.0f} GFLOP/s, fp32 {fp32:.0f} GFLOP/s "
        f"({speedup:.2f}x)"
    )
    known[key] = {"precision": chosen, "why": why, "measured_at": int(time.time())}
    _write(cache, known)
    log.info("precision: %s, %s", chosen, why)
    return Choice(chosen, why)


def probe(repeats: int = 4) -> tuple[float, float]:
    """Matrix-product throughput (GFLOP/s) in fp32 and in bf16: the best of `repeats` timed
    runs of each shape after a warm-up, summed over the shapes (a few tenths of a second)."""
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        flops, seconds = 0.0, 0.0
        for m, k, n in PROBE_SHAPES:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - started)
            flops += 2 * m * k * n
            seconds += best
        results.append(flops / seconds / 1e9)
    return results[0], results[1]


def _read(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(cache: Path, known: dict[str, dict[str, Any]]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(known, indent=1))
        partial.replace(cache)
    except OSError as exc:  # a read-only home: measure again next time
        log.warning("cannot cache the precision probe in %s: %s", cache, exc)
