"""Llama Stack's eval family over the native Evaluations API: a benchmark registered here is a
native benchmark whose graders are its scoring functions (named after them), its list kept in
the benchmark's metadata; a job is a native evaluation job, its status and result read back in
Llama Stack's shapes. `/v1/scoring/score` grades given answers with the same graders, with no
model run, as the caller (`GraderService`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from llama_post.apis.evaluations import (
    Benchmark,
    CreateEvaluationRequest,
    EvaluationJob,
    EvaluationResultsRequest,
    EvaluationRow,
    RegisterBenchmarkRequest,
)
from llama_post.apis.evaluations.llama_stack import (
    EvaluateResponse,
    JobStatus,
    ListScoringFunctionsResponse,
    LlamaStackBenchmark,
    LlamaStackJob,
    LlamaStackListBenchmarksResponse,
    LlamaStackRegisterBenchmarkRequest,
    ModelCandidate,
    RunEvalRequest,
    ScoreRequest,
    ScoreResponse,
    ScoringFn,
    ScoringResult,
)
from llama_post.apis.post_training.graders import Grader, StringCheckGrader
from llama_post.distribution.evaluation_rows import summarize
from llama_post.distribution.graders import GraderService
from llama_post.errors import InvalidRequestError, NotFoundError
from llama_post.graders import Sample

FUNCTIONS: dict[str, tuple[Literal["eq", "like"], str]] = {
    "basic::equality": ("eq", "The answer equals the row's `expected_answer` (1 or 0)."),
    "basic::subset_of": ("like", "The row's `expected_answer` lies within the answer (1 or 0)."),
}
STATUS: dict[str, JobStatus] = {
    "queued": "scheduled",
    "running": "in_progress",
    "cancelling": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def grader_of(function: str, field: str) -> Grader:
    if function not in FUNCTIONS:
        raise InvalidRequestError(
            f"{field}: no scoring function {function!r}; served: {', '.join(FUNCTIONS)}",
            param=field,
        )
    return StringCheckGrader(
        type="string_check",
        name=function,
        input="{{sample.output_text}}",
        reference="{{item.expected_answer}}",
        operation=FUNCTIONS[function][0],
    )


class LlamaStackEval:
    """`native` is the guarded native service."""

    def __init__(self, native: Any, graders: GraderService) -> None:
        self.native = native
        self.graders = graders

    async def register_eval_benchmark(
        self, request: LlamaStackRegisterBenchmarkRequest
    ) -> LlamaStackBenchmark:
        graders = [
            grader_of(f, f"scoring_functions[{i}]") for i, f in enumerate(request.scoring_functions)
        ]
        made = await self.native.register_benchmark(
            RegisterBenchmarkRequest(
                benchmark_id=request.benchmark_id,
                dataset_id=request.dataset_id,
                graders=graders,
                metadata={
                    **(request.metadata or {}),
                    "scoring_functions": request.scoring_functions,
                },
            )
        )
        return _benchmark(made)

    async def list_eval_benchmarks(self) -> LlamaStackListBenchmarksResponse:
        made = await self.native.list_benchmarks()
        return LlamaStackListBenchmarksResponse(data=[_benchmark(b) for b in made.data])

    async def get_eval_benchmark(self, benchmark_id: str) -> LlamaStackBenchmark:
        return _benchmark(await self.native.get_benchmark(benchmark_id))

    async def run_eval(self, benchmark_id: str, request: RunEvalRequest) -> LlamaStackJob:
        config = request.benchmark_config
        candidate = config.eval_candidate
        if not isinstance(candidate, ModelCandidate):
            raise InvalidRequestError(
                "benchmark_config.eval_candidate.type: only `model` candidates are served",
                param="benchmark_config.eval_candidate.type",
            )
        for name, params in config.scoring_params.items():
            if params.get("type", "basic") != "basic":
                raise InvalidRequestError(
                    f"benchmark_config.scoring_params.{name}.type: only `basic` parameters are "
                    f"served, not {params.get('type')!r}",
                    param=f"benchmark_config.scoring_params.{name}.type",
                )
        await self.native.get_benchmark(benchmark_id)
        strategy = candidate.sampling_params.strategy
        sampling: dict[str, Any] = {"temperature": 0.0}
        if strategy.type == "top_p":
            sampling = {"temperature": strategy.temperature or 1.0, "top_p": strategy.top_p}
        elif strategy.type == "top_k":
            raise InvalidRequestError(
                "benchmark_config.eval_candidate.sampling_params.strategy.type: `top_k` is not "
                "served; use `greedy` or `top_p`",
                param="benchmark_config.eval_candidate.sampling_params.strategy.type",
            )
        if candidate.sampling_params.max_tokens:
            sampling["max_tokens"] = candidate.sampling_params.max_tokens
        if candidate.sampling_params.stop:
            sampling["stop"] = candidate.sampling_params.stop
        job = await self.native.create_evaluation(
            CreateEvaluationRequest.model_validate(
                {
                    "benchmark_id": benchmark_id,
                    "model": candidate.model,
                    "sampling": {k: v for k, v in sampling.items() if v is not None},
                    "system_message": candidate.system_message.content
                    if candidate.system_message
                    else None,
                    "max_rows": config.num_examples,
                }
            )
        )
        return _job(job)

    async def _job_of(self, benchmark_id: str, job_id: str) -> EvaluationJob:
        job: EvaluationJob = await self.native.get_evaluation(job_id)
        if job.benchmark_id != benchmark_id:
            raise NotFoundError(f"no job {job_id!r} of benchmark {benchmark_id!r}", param="job_id")
        return job

    async def eval_job_status(self, benchmark_id: str, job_id: str) -> LlamaStackJob:
        return _job(await self._job_of(benchmark_id, job_id))

    async def eval_job_cancel(self, benchmark_id: str, job_id: str) -> LlamaStackJob:
        job = await self._job_of(benchmark_id, job_id)
        if job.status in ("queued", "running"):
            job = await self.native.cancel_evaluation(job_id)
        return _job(job)

    async def eval_job_result(self, benchmark_id: str, job_id: str) -> EvaluateResponse:
        job = await self._job_of(benchmark_id, job_id)
        rows: list[EvaluationRow] = []
        start: int | None = 0
        while start is not None:
            page = await self.native.get_evaluation_results(
                job_id, EvaluationResultsRequest(start_index=start, limit=10000)
            )
            rows += page.data
            start = page.next_start_index
        return EvaluateResponse(
            generations=[{"generated_answer": r.output} for r in rows],
            scores={
                name: _result(
                    [{"score": r.scores.get(name, 0.0)} for r in rows],
                    [r.model_dump() for r in rows],
                    name,
                )
                for name in job.metrics
            },
        )

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        results: dict[str, ScoringResult] = {}
        for name, params in request.scoring_functions.items():
            field = f"scoring_functions.{name}"
            if params is not None and params.get("type", "basic") != "basic":
                raise InvalidRequestError(
                    f"{field}.type: only `basic` parameters are served", param=f"{field}.type"
                )
            runner = await self.graders.runner(grader_of(name, field), field)
            pairs = []
            for i, row in enumerate(request.input_rows):
                answer = row.get("generated_answer")
                if not isinstance(answer, str):
                    raise InvalidRequestError(
                        f"input_rows[{i}].generated_answer: each row holds its answer as a string",
                        param=f"input_rows[{i}].generated_answer",
                    )
                pairs.append((row, Sample.of(answer)))
            graded = await asyncio.to_thread(runner.grade_many, pairs)
            records = [
                {
                    "scores": {name: g.score},
                    "passed": {name: g.error is None and g.score >= 1.0},
                    "errors": {name: g.error} if g.error else {},
                }
                for g in graded
            ]
            rows = [{"score": g.score} for g in graded]
            results[name] = _result(rows, records, name)
        return ScoreResponse(results=results)

    async def list_scoring_functions(self) -> ListScoringFunctionsResponse:
        return ListScoringFunctionsResponse(data=[_function(f) for f in FUNCTIONS])

    async def get_scoring_function(self, scoring_fn_id: str) -> ScoringFn:
        if scoring_fn_id not in FUNCTIONS:
            raise NotFoundError(f"no scoring function {scoring_fn_id!r}", param="scoring_fn_id")
        return _function(scoring_fn_id)


def _function(name: str) -> ScoringFn:
    return ScoringFn(
        identifier=name,
        provider_resource_id=name,
        description=FUNCTIONS[name][1],
        params={"type": "basic", "aggregation_functions": ["accuracy"]},
    )


def _result(rows: list[dict[str, Any]], records: list[dict[str, Any]], name: str) -> ScoringResult:
    """Llama Stack's `accuracy` aggregate, and the native metrics with their intervals."""
    summary = summarize(records, [name])[name]
    accuracy = {
        "accuracy": summary.mean,
        "num_correct": summary.passed,
        "num_total": summary.count,
    }
    return ScoringResult(
        score_rows=rows, aggregated_results={"accuracy": accuracy, **summary.model_dump()}
    )


def _benchmark(made: Benchmark) -> LlamaStackBenchmark:
    functions = made.metadata.get("scoring_functions")
    names = (
        [str(f) for f in functions]
        if isinstance(functions, list)
        else [g.name for g in made.graders]
    )
    return LlamaStackBenchmark(
        identifier=made.benchmark_id,
        provider_resource_id=made.benchmark_id,
        dataset_id=made.dataset_id,
        scoring_functions=names,
        metadata=made.metadata,
    )


def _job(job: EvaluationJob) -> LlamaStackJob:
    return LlamaStackJob(job_id=job.evaluation_id, status=STATUS[job.status])
