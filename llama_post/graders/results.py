"""What grading answers (`GradeResult`) and what it is allowed (`GraderSettings`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_post.graders.templates import ErrorKind, Sample

Pair = tuple[Mapping[str, Any], Sample]


@dataclass(frozen=True)
class GradeResult:
    """A sample's score; `sub_scores` are a `multi` grader's named parts (empty otherwise);
    `error` says why the score is 0 when grading failed."""

    score: float
    sub_scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_kind: ErrorKind | None = None  # what failed, when `error` is set


@dataclass(frozen=True)
class GraderSettings:
    """What the distribution allows (run.yaml's `graders:`): the python grader is off unless
    enabled, and then limited per sample."""

    python_enabled: bool = False
    python_cpu_seconds: float = 5
    python_memory_mb: int = 512
    python_timeout_s: float = 10
