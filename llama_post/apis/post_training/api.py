from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from llama_post.apis.post_training.models import (
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
    ListPostTrainingJobsResponse,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PreferenceOptimizeRequest,
    PreflightResponse,
    SupervisedFineTuneRequest,
)
from llama_post.schema import webmethod


class PostTraining(Protocol):
    """Fine-tuning as durable jobs: queued, run in worker processes, resumable, cancellable."""

    @webmethod(route="/v1/post-training/supervised-fine-tune", method="POST")
    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        """Start a supervised fine-tuning job (LoRA or full).

        The request is checked against its data and model first, so a bad one fails at once.
        """
        ...

    @webmethod(route="/v1/post-training/preference-optimize", method="POST")
    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        """Start a preference optimization (DPO) job on a preference dataset.

        Checked like a fine-tuning request: a bad model, dataset or row fails at once.
        """
        ...

    @webmethod(route="/v1/post-training/preflight", method="POST")
    async def preflight(self, request: SupervisedFineTuneRequest) -> PreflightResponse:
        """Check a job request without training: rows, token lengths, truncation, an example."""
        ...

    @webmethod(route="/v1/post-training/jobs", method="GET")
    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        """List jobs, oldest first."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}", method="GET")
    async def get_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        """A job's status, timestamps, progress and checkpoints."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/cancel", method="POST")
    async def cancel_job(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        """Cancel a job; its worker stops within seconds."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/artifacts", method="GET")
    async def get_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        """A job's checkpoints: step, epoch, metrics, location and served model id."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/logs", method="GET")
    async def get_job_logs(self, job_uuid: str) -> JobLogsResponse:
        """The job's log, tracebacks included."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/metrics", method="GET")
    async def get_job_metrics(self, job_uuid: str) -> JobMetricsResponse:
        """Per-step metrics: loss, learning rate, grad norm, tokens/s, validation loss."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/events", method="GET")
    async def stream_job_events(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        """Follow a job: its log lines, metrics and status as server-sent events, to its end."""
        ...
