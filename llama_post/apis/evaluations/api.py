from __future__ import annotations

from typing import Protocol

from llama_post.apis.evaluations.llama_stack import (
    EvaluateResponse,
    ListScoringFunctionsResponse,
    LlamaStackBenchmark,
    LlamaStackJob,
    LlamaStackListBenchmarksResponse,
    LlamaStackRegisterBenchmarkRequest,
    RunEvalRequest,
    ScoreRequest,
    ScoreResponse,
    ScoringFn,
)
from llama_post.apis.evaluations.models import (
    Benchmark,
    BenchmarkId,
    CreateEvaluationRequest,
    DeleteBenchmarkResponse,
    EvaluationEventsResponse,
    EvaluationId,
    EvaluationJob,
    EvaluationResultsRequest,
    EvaluationResultsResponse,
    ListBenchmarksResponse,
    ListEvaluationsRequest,
    ListEvaluationsResponse,
    RegisterBenchmarkRequest,
)
from llama_post.apis.evaluations.openai_evals import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    DeleteEvalResponse,
    DeleteEvalRunResponse,
    Eval,
    EvalId,
    EvalRun,
    ListEvalRunsRequest,
    ListEvalRunsResponse,
    ListEvalsRequest,
    ListEvalsResponse,
    ListOutputItemsRequest,
    ListOutputItemsResponse,
    OutputItem,
    OutputItemId,
    RunId,
    UpdateEvalRequest,
)
from llama_post.schema import OPENAI_EVALS, V0_2, V0_7, creates, webmethod


class EvaluationJobs(Protocol):
    """Benchmarks (a dataset and graders) and evaluation jobs (one model over a benchmark,
    every row graded, with per-row results and aggregate metrics)."""

    @creates(benchmark_id="/benchmark_id")
    @webmethod(route="/v1/evaluation/benchmarks", method="POST")
    async def register_benchmark(self, request: RegisterBenchmarkRequest) -> Benchmark:
        """Register a dataset and its graders as a benchmark; every grader is checked now."""
        ...

    @webmethod(route="/v1/evaluation/benchmarks", method="GET")
    async def list_benchmarks(self) -> ListBenchmarksResponse:
        """List benchmarks."""
        ...

    @webmethod(route="/v1/evaluation/benchmarks/{benchmark_id}", method="GET")
    async def get_benchmark(self, benchmark_id: BenchmarkId) -> Benchmark:
        """Get one benchmark."""
        ...

    @webmethod(route="/v1/evaluation/benchmarks/{benchmark_id}", method="DELETE")
    async def delete_benchmark(self, benchmark_id: BenchmarkId) -> DeleteBenchmarkResponse:
        """Delete a benchmark; its evaluations and their results stay."""
        ...

    @creates(evaluation_id="/evaluation_id")
    @webmethod(route="/v1/evaluation/jobs", method="POST")
    async def create_evaluation(self, request: CreateEvaluationRequest) -> EvaluationJob:
        """Run a model over a benchmark in the background, its rows decoded together."""
        ...

    @webmethod(route="/v1/evaluation/jobs", method="GET")
    async def list_evaluations(self, request: ListEvaluationsRequest) -> ListEvaluationsResponse:
        """List evaluation jobs, newest first."""
        ...

    @webmethod(route="/v1/evaluation/jobs/{evaluation_id}", method="GET")
    async def get_evaluation(self, evaluation_id: EvaluationId) -> EvaluationJob:
        """Get an evaluation job: its status, row counts and metrics so far."""
        ...

    @webmethod(route="/v1/evaluation/jobs/{evaluation_id}/cancel", method="POST")
    async def cancel_evaluation(self, evaluation_id: EvaluationId) -> EvaluationJob:
        """Cancel a job: rows not yet answered are not; the metrics cover those that were."""
        ...

    @webmethod(route="/v1/evaluation/jobs/{evaluation_id}/results", method="GET")
    async def get_evaluation_results(
        self, evaluation_id: EvaluationId, request: EvaluationResultsRequest
    ) -> EvaluationResultsResponse:
        """Read a page of per-row results, in row order."""
        ...

    @webmethod(route="/v1/evaluation/jobs/{evaluation_id}/events", method="GET")
    async def get_evaluation_events(self, evaluation_id: EvaluationId) -> EvaluationEventsResponse:
        """The job's log: started, resumed, rows done, failures, its end."""
        ...


class Evaluations(EvaluationJobs, Protocol):
    """The native routes, with OpenAI's Evals API and Llama Stack's eval family written over
    them (the stack's `OpenAIEvals` and `LlamaStackEval`)."""

    @creates(eval_id="/id")
    @webmethod(route="/v1/evals", method="POST", compat=OPENAI_EVALS)
    async def create_eval(self, request: CreateEvalRequest) -> Eval:
        """Create an eval: the schema of its rows and its testing criteria (graders)."""
        ...

    @webmethod(route="/v1/evals", method="GET", compat=OPENAI_EVALS)
    async def list_evals(self, request: ListEvalsRequest) -> ListEvalsResponse:
        """List evals; page with `after`."""
        ...

    @webmethod(route="/v1/evals/{eval_id}", method="GET", compat=OPENAI_EVALS)
    async def get_eval(self, eval_id: EvalId) -> Eval:
        """Get an eval."""
        ...

    @webmethod(route="/v1/evals/{eval_id}", method="POST", compat=OPENAI_EVALS)
    async def update_eval(self, eval_id: EvalId, request: UpdateEvalRequest) -> Eval:
        """Rename an eval or replace its metadata."""
        ...

    @webmethod(route="/v1/evals/{eval_id}", method="DELETE", compat=OPENAI_EVALS)
    async def delete_eval(self, eval_id: EvalId) -> DeleteEvalResponse:
        """Delete an eval; its runs' native jobs and results stay."""
        ...

    @creates(run_id="/id", eval_id="/eval_id")
    @webmethod(route="/v1/evals/{eval_id}/runs", method="POST", compat=OPENAI_EVALS)
    async def create_eval_run(self, eval_id: EvalId, request: CreateEvalRunRequest) -> EvalRun:
        """Run a model over rows and grade them with the eval's criteria (a native job)."""
        ...

    @webmethod(route="/v1/evals/{eval_id}/runs", method="GET", compat=OPENAI_EVALS)
    async def list_eval_runs(
        self, eval_id: EvalId, request: ListEvalRunsRequest
    ) -> ListEvalRunsResponse:
        """List an eval's runs; page with `after`."""
        ...

    @webmethod(route="/v1/evals/{eval_id}/runs/{run_id}", method="GET", compat=OPENAI_EVALS)
    async def get_eval_run(self, eval_id: EvalId, run_id: RunId) -> EvalRun:
        """Get a run: its status, result counts and per-criterion results."""
        ...

    @webmethod(route="/v1/evals/{eval_id}/runs/{run_id}", method="POST", compat=OPENAI_EVALS)
    @webmethod(route="/v1/evals/{eval_id}/runs/{run_id}/cancel", method="POST", compat=OPENAI_EVALS)
    async def cancel_eval_run(self, eval_id: EvalId, run_id: RunId) -> EvalRun:
        """Cancel a run (the SDK's `runs.cancel`)."""
        ...

    @webmethod(route="/v1/evals/{eval_id}/runs/{run_id}", method="DELETE", compat=OPENAI_EVALS)
    async def delete_eval_run(self, eval_id: EvalId, run_id: RunId) -> DeleteEvalRunResponse:
        """Forget a run (a running one is cancelled first)."""
        ...

    @webmethod(
        route="/v1/evals/{eval_id}/runs/{run_id}/output_items", method="GET", compat=OPENAI_EVALS
    )
    async def list_eval_run_output_items(
        self, eval_id: EvalId, run_id: RunId, request: ListOutputItemsRequest
    ) -> ListOutputItemsResponse:
        """Each graded row: its item, the model's answer and each criterion's result."""
        ...

    @webmethod(
        route="/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
        method="GET",
        compat=OPENAI_EVALS,
    )
    async def get_eval_run_output_item(
        self, eval_id: EvalId, run_id: RunId, output_item_id: OutputItemId
    ) -> OutputItem:
        """One graded row."""
        ...

    # -- Llama Stack's eval family (llama-stack-client 0.2; 0.7's under /v1alpha) ---------

    @creates(benchmark_id="/identifier")
    @webmethod(route="/v1/eval/benchmarks", method="POST", compat=V0_2)
    @webmethod(route="/v1alpha/eval/benchmarks", method="POST", compat=V0_7)
    async def register_eval_benchmark(
        self, request: LlamaStackRegisterBenchmarkRequest
    ) -> LlamaStackBenchmark:
        """Register a dataset and scoring functions as a benchmark (a native one)."""
        ...

    @webmethod(route="/v1/eval/benchmarks", method="GET", compat=V0_2)
    @webmethod(route="/v1alpha/eval/benchmarks", method="GET", compat=V0_7)
    async def list_eval_benchmarks(self) -> LlamaStackListBenchmarksResponse:
        """List benchmarks, in Llama Stack's shape."""
        ...

    @webmethod(route="/v1/eval/benchmarks/{benchmark_id}", method="GET", compat=V0_2)
    @webmethod(route="/v1alpha/eval/benchmarks/{benchmark_id}", method="GET", compat=V0_7)
    async def get_eval_benchmark(self, benchmark_id: BenchmarkId) -> LlamaStackBenchmark:
        """Get a benchmark, in Llama Stack's shape."""
        ...

    @creates(evaluation_id="/job_id")
    @webmethod(route="/v1/eval/benchmarks/{benchmark_id}/jobs", method="POST", compat=V0_2)
    @webmethod(route="/v1alpha/eval/benchmarks/{benchmark_id}/jobs", method="POST", compat=V0_7)
    async def run_eval(self, benchmark_id: BenchmarkId, request: RunEvalRequest) -> LlamaStackJob:
        """Run a model over a benchmark (a native evaluation job)."""
        ...

    @webmethod(route="/v1/eval/benchmarks/{benchmark_id}/jobs/{job_id}", method="GET", compat=V0_2)
    @webmethod(
        route="/v1alpha/eval/benchmarks/{benchmark_id}/jobs/{job_id}", method="GET", compat=V0_7
    )
    async def eval_job_status(
        self, benchmark_id: BenchmarkId, job_id: EvaluationId
    ) -> LlamaStackJob:
        """A job's status."""
        ...

    @webmethod(
        route="/v1/eval/benchmarks/{benchmark_id}/jobs/{job_id}", method="DELETE", compat=V0_2
    )
    @webmethod(
        route="/v1alpha/eval/benchmarks/{benchmark_id}/jobs/{job_id}", method="DELETE", compat=V0_7
    )
    async def eval_job_cancel(
        self, benchmark_id: BenchmarkId, job_id: EvaluationId
    ) -> LlamaStackJob:
        """Cancel a job."""
        ...

    @webmethod(
        route="/v1/eval/benchmarks/{benchmark_id}/jobs/{job_id}/result", method="GET", compat=V0_2
    )
    @webmethod(
        route="/v1alpha/eval/benchmarks/{benchmark_id}/jobs/{job_id}/result",
        method="GET",
        compat=V0_7,
    )
    async def eval_job_result(
        self, benchmark_id: BenchmarkId, job_id: EvaluationId
    ) -> EvaluateResponse:
        """A job's generations and, per scoring function, its score rows and aggregates."""
        ...

    @webmethod(route="/v1/scoring/score", method="POST", compat=V0_2)
    async def score(self, request: ScoreRequest) -> ScoreResponse:
        """Score rows that hold their `generated_answer`, with no model run."""
        ...

    @webmethod(route="/v1/scoring-functions", method="GET", compat=V0_2)
    async def list_scoring_functions(self) -> ListScoringFunctionsResponse:
        """The scoring functions served: `basic::equality`, `basic::subset_of`."""
        ...

    @webmethod(route="/v1/scoring-functions/{scoring_fn_id}", method="GET", compat=V0_2)
    async def get_scoring_function(self, scoring_fn_id: str) -> ScoringFn:
        """One scoring function."""
        ...
