"""`GraderRunner`: a grader, checked once, then scoring samples.

Building one checks everything that can be checked without a sample (templates, patterns,
schemas, formulas, metrics, whether the python grader is enabled) and refuses with a 400 naming
the field. Scoring never raises: a grader that fails on a sample gives it 0 and the error.
It needs no server: a training worker builds one from the job's grader and its settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from llama_post.apis.post_training.graders import (
    Grader,
    JsonSchemaGrader,
    MultiGrader,
    PythonGrader,
    RegexGrader,
    ScoreModelGrader,
    SingleGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from llama_post.graders.formula import Formula
from llama_post.graders.matchers import JsonSchemaMatch, RegexMatch, StringCheck
from llama_post.graders.python import PythonSandbox
from llama_post.graders.results import GradeResult, GraderSettings, Pair
from llama_post.graders.score_model import ModelScorer, ScoreModel
from llama_post.graders.similarity import TextSimilarity
from llama_post.graders.templates import GradingError, Sample, context

DEFAULTS = GraderSettings()  # python graders off


class Scoring(Protocol):
    def score(self, scope: dict[str, Any]) -> float: ...


class Kind(Protocol):
    def grade_many(self, pairs: Sequence[Pair]) -> list[GradeResult]: ...


class PerSample:
    """A grader that scores one sample at a time in this process."""

    def __init__(self, scoring: Scoring) -> None:
        self.scoring = scoring

    def grade_many(self, pairs: Sequence[Pair]) -> list[GradeResult]:
        return [self._grade(item, sample) for item, sample in pairs]

    def _grade(self, item: Mapping[str, Any], sample: Sample) -> GradeResult:
        try:
            return GradeResult(float(self.scoring.score(context(item, sample))))
        except Exception as e:  # the grader's failure is the sample's, never the caller's
            return _failed(e)


class Multi:
    def __init__(
        self, grader: MultiGrader, where: str, settings: GraderSettings, scorer: ModelScorer | None
    ) -> None:
        self.parts = {
            name: _single(sub, f"{where}.graders.{name}", settings, scorer)
            for name, sub in grader.graders.items()
        }
        self.formula = Formula(grader.calculate_output, self.parts, f"{where}.calculate_output")

    def grade_many(self, pairs: Sequence[Pair]) -> list[GradeResult]:
        parts = {name: kind.grade_many(pairs) for name, kind in self.parts.items()}
        return [self._combine({n: r[i] for n, r in parts.items()}) for i in range(len(pairs))]

    def _combine(self, results: dict[str, GradeResult]) -> GradeResult:
        scores = {name: r.score for name, r in results.items()}
        failed = [(name, r) for name, r in results.items() if r.error is not None]
        if failed:
            errors = "; ".join(f"{name}: {r.error}" for name, r in failed)
            return GradeResult(0.0, scores, errors, failed[0][1].error_kind)
        try:
            return GradeResult(self.formula.evaluate(scores), scores)
        except Exception as e:
            return replace(_failed(e), sub_scores=scores)


def _single(
    grader: SingleGrader, where: str, settings: GraderSettings, scorer: ModelScorer | None
) -> Kind:
    if isinstance(grader, StringCheckGrader):
        return PerSample(StringCheck(grader, where))
    if isinstance(grader, TextSimilarityGrader):
        return PerSample(TextSimilarity(grader, where))
    if isinstance(grader, RegexGrader):
        return PerSample(RegexMatch(grader, where))
    if isinstance(grader, JsonSchemaGrader):
        return PerSample(JsonSchemaMatch(grader, where))
    if isinstance(grader, ScoreModelGrader):
        return PerSample(ScoreModel(grader, where, scorer))
    if isinstance(grader, PythonGrader):
        return PythonSandbox(grader, where, settings)
    raise TypeError(f"not a grader: {grader!r}")


def _failed(error: Exception) -> GradeResult:
    kind = error.kind if isinstance(error, GradingError) else "other"
    return GradeResult(0.0, error=str(error) or type(error).__name__, error_kind=kind)


class GraderRunner:
    """Scores samples with one grader. `where` is the grader's place in the request, which
    errors name (`grader`, `method.reinforcement.grader`)."""

    def __init__(
        self,
        grader: Grader,
        settings: GraderSettings = DEFAULTS,
        scorer: ModelScorer | None = None,
        *,
        where: str = "grader",
    ) -> None:
        self.grader = grader
        self.kind: Kind = (
            Multi(grader, where, settings, scorer)
            if isinstance(grader, MultiGrader)
            else _single(grader, where, settings, scorer)
        )

    def grade(self, item: Mapping[str, Any], sample: Sample) -> GradeResult:
        return self.grade_many([(item, sample)])[0]

    def grade_many(self, pairs: Sequence[Pair]) -> list[GradeResult]:
        """Scores in the order of `pairs`; a python grader runs them in one sandbox process."""
        if not pairs:
            return []
        try:
            return self.kind.grade_many(pairs)
        except Exception as e:  # a failure of the whole batch (the sandbox would not start)
            return [_failed(e) for _ in pairs]
