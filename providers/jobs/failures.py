"""Why a worker failed, read from its exit code and the end of its log, in words for the job's
record and as one of a few classes for the metrics."""

from __future__ import annotations

import signal
from pathlib import Path

from providers.jobs.folder import EXIT_CANCELLED, EXIT_NONFINITE, EXIT_OUT_OF_MEMORY, checkpoints


def failure(log_path: Path, code: int, checkpoint_dir: Path) -> str:
    """The reason a worker failed, from its exit and the end of its log."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    tail = [line for line in lines[-40:] if line.strip()]
    kept = checkpoints(checkpoint_dir)
    resume = f"; checkpoint {kept[-1][1].name} is intact" if kept else ""
    if code == -signal.SIGKILL:
        return (
            "the worker was killed (SIGKILL), which on Linux is most often the kernel's "
            f"out-of-memory killer: the job needs more memory than the machine had{resume}"
        )
    if code == EXIT_OUT_OF_MEMORY or any("out of memory" in line.lower() for line in tail):
        return f"the worker ran out of memory: {tail[-1] if tail else ''}{resume}"
    if any("No space left on device" in line for line in tail):
        return f"the disk is full: {tail[-1]}{resume}"
    if code == EXIT_NONFINITE:
        said = [line[line.index("non-finite") :] for line in tail if "non-finite" in line]
        return f"{said[-1] if said else 'a non-finite loss'}: the job stopped{resume}"
    reason = tail[-1] if tail else f"the worker exited with code {code}"
    return f"{reason} (the job's log has the traceback){resume}"


def out_of_memory(code: int, reason: str) -> bool:
    return code == EXIT_OUT_OF_MEMORY or code == -signal.SIGKILL or "out of memory" in reason


def failure_class(code: int, stalled: bool, reason: str) -> str:
    """A failed attempt's reason as one of a few words, the metrics' label."""
    if stalled:
        return "stalled"
    if code == EXIT_NONFINITE:
        return "nonfinite"
    if out_of_memory(code, reason):
        return "out_of_memory"
    if "the disk is full" in reason:
        return "disk_full"
    if code < 0 or code == EXIT_CANCELLED:
        return "lost"
    return "error"


def intact(reason: str) -> str:
    """The "; checkpoint X is intact" a failure reason ends with, if it does."""
    at = reason.find("; checkpoint ")
    return reason[at:] if at >= 0 else ""
