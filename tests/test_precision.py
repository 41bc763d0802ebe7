"""`dtype: auto`: the rule, the probe's cache per machine, explicit choices, refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from providers.utils import precision
from providers.utils.precision import UnsupportedPrecision, choose


def test_explicit_choices_win(tmp_path: Path) -> None:
    cache = tmp_path / "precision.json"
    assert choose("fp32", "cpu", cache).precision == "fp32"
    assert choose("float32", "cpu", cache).precision == "fp32"
    assert choose("bf16", "cpu", cache).torch_dtype == torch.bfloat16
    assert not cache.exists()  # nothing measured for an explicit choice


def test_auto_on_a_cpu_with_amx_is_bf16_without_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unexpected(repeats: int = 4) -> tuple[float, float]:
        raise AssertionError("an AMX-BF16 CPU needs no probe")

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(precision, "probe", unexpected)
    chosen = choose("auto", "cpu", tmp_path / "precision.json")
    assert chosen.precision == "bf16" and "has AMX-BF16" in chosen.why, chosen.why
    assert not (tmp_path / "precision.json").exists()


def test_auto_on_a_cpu_without_amx_measures_once_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this machine's own flags less AMX, so the real probe runs on any machine
    flags = precision.cpu_flags() - {"amx_bf16"}
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    cache = tmp_path / "precision.json"
    first = choose("auto", "cpu", cache)
    assert "GFLOP/s" in first.why, first.why
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["precision"] == first.precision
    bf16, fp32 = (float(w.split()[0]) for w in first.why.split("matmuls ")[1].split(", fp32 "))
    assert first.precision == ("bf16" if bf16 / fp32 >= precision.SPEEDUP_NEEDED else "fp32")

    again = choose("auto", "cpu", cache)
    assert again.precision == first.precision and "measured before" in again.why

    # the cached answer is what decides (the probe does not run again)
    (key,) = json.loads(cache.read_text())
    flipped = "fp32" if first.precision == "bf16" else "bf16"
    cache.write_text(json.dumps({key: {"precision": flipped, "why": "seeded"}}))
    assert choose("auto", "cpu", cache).precision == flipped


def test_a_failed_probe_falls_back_to_fp32_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(repeats: int = 4) -> tuple[float, float]:
        raise RuntimeError("no bf16 kernels")

    monkeypatch.setattr(precision, "probe", broken)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        chosen = choose("auto", "cpu", tmp_path / "precision.json")
    assert chosen.precision == "fp32" and "no bf16 kernels" in chosen.why
    assert "the bf16 probe failed (no bf16 kernels); computing in fp32" in caplog.text
    assert not (tmp_path / "precision.json").exists()  # a failure is not remembered


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bf16_on_a_device_that_cannot_compute_it_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedPrecision, match=r"bf16: the device cuda \(.*\) cannot"):
        choose("bf16", "cuda")
    assert choose("auto", "cuda").precision == "fp32"
    with pytest.raises(UnsupportedPrecision, match="fp8: not a precision"):
        choose("fp8", "cpu")
