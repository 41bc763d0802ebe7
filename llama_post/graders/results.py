"""What grading answers (`GradeResult`) and what it is allowed (`GraderSettings`, part of the
PostTraining API, which hands it to providers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_post.apis.post_training.graders import GraderSettings
from llama_post.graders.templates import ErrorKind, Sample

__all__ = ["GradeResult", "GraderSettings", "Pair"]

Pair = tuple[Mapping[str, Any], Sample]


@dataclass(frozen=True)
class GradeResult:
    """A sample's score; `sub_scores` are a `multi` grader's named parts (empty otherwise);
    `error` says why the score is 0 when grading failed."""

    score: float
    sub_scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_kind: ErrorKind | None = None  # what failed, when `error` is set
