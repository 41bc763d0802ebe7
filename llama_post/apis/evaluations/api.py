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
from llama_post.schema import creates, webmethod


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
    """The routes of evaluations: the native ones."""
