from __future__ import annotations

from typing import Protocol

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
from llama_post.schema import OPENAI_EVALS, creates, webmethod


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
