from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import Field

from llama_post.apis.post_training.access import InferenceAccess
from llama_post.apis.post_training.exports import (
    ExportId,
    ExportJob,
    ExportRequest,
    ListExportsResponse,
    MergeRequest,
)
from llama_post.apis.post_training.graders import (
    GraderRunRequest,
    GraderRunResponse,
    GraderSettings,
    GraderValidateRequest,
    GraderValidateResponse,
)
from llama_post.apis.post_training.jobs import (
    ArchiveUrl,
    Checkpoint,
    CheckpointId,
    CheckpointList,
    CheckpointPage,
    CheckpointTTLRequest,
    DeletedCheckpoint,
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
    ListCheckpointsRequest,
    ListPostTrainingJobsResponse,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PreflightResponse,
    TrainingEstimate,
)
from llama_post.apis.post_training.models import (
    JobUuid,
    PreferenceOptimizeRequest,
    ReinforceRequest,
    SupervisedFineTuneRequest,
)
from llama_post.apis.post_training.openai_fine_tuning import (
    CreateFineTuningJobRequest,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
    ListFineTuningJobsRequest,
    PageRequest,
)
from llama_post.apis.post_training.tinker import (
    TinkerAccepted,
    TinkerCapabilities,
    TinkerCheckpointPageRequest,
    TinkerCheckpoints,
    TinkerClientConfig,
    TinkerDynamicConfig,
    TinkerEmpty,
    TinkerExternalWeightsUrls,
    TinkerHealth,
    TinkerHello,
    TinkerPageRequest,
    TinkerRunId,
    TinkerScopeRequest,
    TinkerTrainingRun,
    TinkerTrainingRuns,
    TinkerTTLRequest,
    TinkerWeightsInfo,
    TinkerWeightsInfoRequest,
)
from llama_post.schema import (
    OPENAI_FINE_TUNING,
    TINKER,
    V0_2,
    V0_7,
    FileContent,
    creates,
    webmethod,
)

Token = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{43}$", description="A signed token."),
]
TinkerKind = Annotated[
    str,
    Field(pattern=r"^(weights|sampler_weights|external_weights)$", examples=["weights"]),
]


class PostTrainingJobs(Protocol):
    """Fine-tuning as durable jobs: queued, run in worker processes, resumable, cancellable.

    What a post-training provider implements; the stack serves `PostTraining` over it."""

    @creates(job_uuid="/job_uuid")
    @webmethod(route="/v1/post-training/supervised-fine-tune", method="POST")
    @webmethod(route="/v1alpha/post-training/supervised-fine-tune", method="POST", compat=V0_7)
    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        """Start a supervised fine-tuning job (LoRA or full).

        The request is checked against its data and model first, so a bad one fails at once.
        """
        ...

    @creates(job_uuid="/job_uuid")
    @webmethod(route="/v1/post-training/preference-optimize", method="POST")
    @webmethod(route="/v1alpha/post-training/preference-optimize", method="POST", compat=V0_7)
    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        """Start a preference optimization (DPO) job on a preference dataset.

        Checked like a fine-tuning request: a bad model, dataset or row fails at once.
        """
        ...

    @creates(job_uuid="/job_uuid")
    @webmethod(route="/v1/post-training/reinforce", method="POST")
    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob:
        """Start a reinforcement fine-tuning (GRPO) job: answers sampled from the policy for
        each prompt of a prompt dataset are scored by the request's grader, and the policy is
        pushed toward the answers that beat their group.

        Checked like a fine-tuning request (model, dataset, rows, grader) before it is queued.
        """
        ...

    @webmethod(route="/v1/post-training/preflight", method="POST")
    async def preflight(self, request: SupervisedFineTuneRequest) -> PreflightResponse:
        """Check a job request without training: rows, token lengths, truncation, an example."""
        ...

    @webmethod(route="/v1/post-training/estimate", method="POST")
    async def estimate(self, request: SupervisedFineTuneRequest) -> TrainingEstimate:
        """What a supervised job would take on this deployment's device, before it runs:
        optimizer steps, tokens, FLOPs, peak memory by part, wall time and cost (from a few
        timed micro-steps of its largest micro-batch, measured here and cached)."""
        ...

    @webmethod(route="/v1/post-training/estimate/preference-optimize", method="POST")
    async def estimate_preference(self, request: PreferenceOptimizeRequest) -> TrainingEstimate:
        """The same estimate for a preference optimization (DPO) job."""
        ...

    @webmethod(route="/v1/post-training/estimate/reinforce", method="POST")
    async def estimate_reinforce(self, request: ReinforceRequest) -> TrainingEstimate:
        """The same estimate for a reinforcement (GRPO) job, with its sampling timed here too:
        an upper bound, every answer as long as `max_tokens` allows."""
        ...

    @webmethod(route="/v1/post-training/jobs", method="GET")
    @webmethod(route="/v1alpha/post-training/jobs", method="GET", compat=V0_7)
    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        """List jobs, oldest first."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}", method="GET")
    @webmethod(route="/v1/post-training/job/status", method="GET", compat=V0_2)
    @webmethod(route="/v1alpha/post-training/jobs/{job_uuid}/status", method="GET", compat=V0_7)
    async def get_job_status(self, job_uuid: JobUuid) -> PostTrainingJobStatusResponse:
        """A job's status, timestamps, progress and checkpoints."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/cancel", method="POST")
    @webmethod(route="/v1/post-training/job/cancel", method="POST", compat=V0_2)
    @webmethod(route="/v1alpha/post-training/jobs/{job_uuid}/cancel", method="POST", compat=V0_7)
    async def cancel_job(self, job_uuid: JobUuid) -> PostTrainingJobStatusResponse:
        """Cancel a job; its worker stops within seconds."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/artifacts", method="GET")
    @webmethod(route="/v1/post-training/job/artifacts", method="GET", compat=V0_2)
    @webmethod(route="/v1alpha/post-training/jobs/{job_uuid}/artifacts", method="GET", compat=V0_7)
    async def get_job_artifacts(self, job_uuid: JobUuid) -> PostTrainingJobArtifactsResponse:
        """A job's checkpoints: step, epoch, metrics, location and served model id."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/logs", method="GET")
    async def get_job_logs(self, job_uuid: JobUuid) -> JobLogsResponse:
        """The job's log, tracebacks included."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/metrics", method="GET")
    async def get_job_metrics(self, job_uuid: JobUuid) -> JobMetricsResponse:
        """Per-step metrics: loss, learning rate, grad norm, tokens/s, validation loss."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/events", method="GET")
    async def stream_job_events(self, job_uuid: JobUuid) -> AsyncIterator[JobEvent]:
        """Follow a job: its log lines, metrics and status as server-sent events, to its end."""
        ...

    @webmethod(
        route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}/archive", method="GET"
    )
    async def checkpoint_archive(
        self, job_uuid: JobUuid, checkpoint_id: CheckpointId
    ) -> FileContent:
        """The checkpoint's folder as a tar.gz, streamed, its sha256 in `x-llama-post-sha256` and
        its size in `content-length` (what `POST /v1/models` registers from an archive)."""
        ...

    @creates(export_id="/export_id")
    @webmethod(route="/v1/post-training/merge", method="POST")
    async def merge_adapter(self, request: MergeRequest) -> ExportJob:
        """Merge a LoRA adapter into its base as a plain Hugging Face folder (a job).

        The adapter is a model (`ft/<job>`, any adapter) or a job's checkpoint; the merged
        folder is registered as `model_id` once the job completes, and downloads as a tar.gz.
        """
        ...

    @creates(export_id="/export_id")
    @webmethod(route="/v1/post-training/export", method="POST")
    async def export_model(self, request: ExportRequest) -> ExportJob:
        """Write a model as one GGUF file, unquantized or quantized (a job).

        A base model, an adapter (merged into its base first) or a job's checkpoint; the file
        carries the tokenizer and chat template llama.cpp reads. Download it once it completes.
        """
        ...

    @webmethod(route="/v1/post-training/exports", method="GET")
    async def list_exports(self) -> ListExportsResponse:
        """Merge and export jobs, oldest first."""
        ...

    @webmethod(route="/v1/post-training/exports/{export_id}", method="GET")
    async def get_export(self, export_id: ExportId) -> ExportJob:
        """A merge or export job: its status and what it made."""
        ...

    @webmethod(route="/v1/post-training/exports/{export_id}/cancel", method="POST")
    async def cancel_export(self, export_id: ExportId) -> ExportJob:
        """Stop a merge or export job; 409 once it has ended."""
        ...

    @webmethod(route="/v1/post-training/exports/{export_id}/download", method="GET")
    async def export_download(self, export_id: ExportId) -> FileContent:
        """What a completed merge or export made: the GGUF file, or the merged folder as a tar.gz.

        Its sha256 is in `x-llama-post-sha256`, its size in `content-length`.
        """
        ...

    async def remove_checkpoint(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        """Delete one of a finished job's checkpoints (not a route: the stack's `Checkpoints`
        serves deleting, with what else must go). `reason` goes to the job's events."""
        ...

    def use_grader_settings(self, settings: GraderSettings) -> None:
        """What the distribution allows graders (run.yaml's `graders`: the python grader), for
        the runners of reinforcement jobs (not a route: the stack sets it once built)."""
        ...

    def use_locations(self, usable: Callable[[Path], bool]) -> None:
        """How to tell whether the caller may use a folder a request names (`checkpoint_dir`,
        a tracker's folder), once resolved: the stack's `Locations.usable`, which refuses
        another owner's job folders (not a route: the stack sets it once built)."""
        ...

    def use_inference_access(self, access: InferenceAccess) -> None:
        """How a job's worker may call this server's inference (a GRPO job's score_model
        grader): a grant per attempt (not a route: the stack sets it once built)."""
        ...

    def job_folders(self, job_uuid: str) -> list[Path]:
        """The folders on this server a job keeps its files in (its own and its checkpoints'; a
        merge's or export's, and what it made); none for a job this provider does not hold here
        (not a route: `Locations` asks)."""
        ...


class PostTraining(PostTrainingJobs, Protocol):
    """The PostTraining API: the jobs of its providers; their checkpoints as a resource, and
    OpenAI's fine-tuning jobs, which the stack serves over them (`Checkpoints` in
    `distribution/checkpoints.py`, `OpenAIFineTuning` in `distribution/fine_tuning.py`),
    whichever provider runs a job."""

    @webmethod(route="/v1/post-training/checkpoints", method="GET")
    async def list_checkpoints(self, request: ListCheckpointsRequest) -> CheckpointPage:
        """The caller's checkpoints across all their jobs, newest first, a page at a time."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/checkpoints", method="GET")
    async def list_job_checkpoints(self, job_uuid: JobUuid) -> CheckpointList:
        """A job's checkpoints, oldest first: type, size, publication, expiry."""
        ...

    @webmethod(route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}", method="GET")
    async def get_checkpoint(self, job_uuid: JobUuid, checkpoint_id: CheckpointId) -> Checkpoint:
        """One checkpoint (its job's owner, or anyone once it is published)."""
        ...

    @webmethod(
        route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}", method="DELETE"
    )
    async def delete_checkpoint(
        self, job_uuid: JobUuid, checkpoint_id: CheckpointId
    ) -> DeletedCheckpoint:
        """Delete a finished job's checkpoint; the model it is served as is unregistered too."""
        ...

    @webmethod(
        route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}/publish",
        method="POST",
    )
    async def publish_checkpoint(
        self, job_uuid: JobUuid, checkpoint_id: CheckpointId
    ) -> Checkpoint:
        """Let every key read and download it (and chat with its model); 409 if it is already."""
        ...

    @webmethod(
        route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}/publish",
        method="DELETE",
    )
    async def unpublish_checkpoint(
        self, job_uuid: JobUuid, checkpoint_id: CheckpointId
    ) -> Checkpoint:
        """Make it its owner's alone again; 409 if it is not published."""
        ...

    @webmethod(
        route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}/ttl", method="PUT"
    )
    async def set_checkpoint_ttl(
        self, job_uuid: JobUuid, checkpoint_id: CheckpointId, request: CheckpointTTLRequest
    ) -> Checkpoint:
        """Remove it that many seconds from now (its job's events say so); null keeps it."""
        ...

    @webmethod(
        route="/v1/post-training/jobs/{job_uuid}/checkpoints/{checkpoint_id}/archive-url",
        method="POST",
    )
    async def checkpoint_archive_url(
        self, job_uuid: JobUuid, checkpoint_id: CheckpointId
    ) -> ArchiveUrl:
        """A URL that downloads the checkpoint's archive with no credentials, for an hour."""
        ...

    @webmethod(route="/v1/post-training/exports/{export_id}/download-url", method="POST")
    async def export_download_url(self, export_id: ExportId) -> ArchiveUrl:
        """A URL that downloads what a completed merge or export made, with no credentials, for
        an hour (409 until it has completed)."""
        ...

    @webmethod(route="/v1/post-training/export-downloads/{token}", method="GET")
    async def download_export(self, token: Token) -> FileContent:
        """What an export's download URL names (the token in the path is its credential)."""
        ...

    @webmethod(route="/v1/post-training/checkpoint-archives/{token}", method="GET")
    async def download_checkpoint_archive(self, token: Token) -> FileContent:
        """The archive an archive URL names (the token in the path is its credential)."""
        ...

    @creates(fine_tuning_job_id="/id")
    @webmethod(route="/v1/fine_tuning/jobs", method="POST", compat=OPENAI_FINE_TUNING)
    async def create_fine_tuning_job(self, request: CreateFineTuningJobRequest) -> FineTuningJob:
        """Create a job the way OpenAI's API does, from uploaded files.

        `method.type` supervised runs supervised fine-tuning, dpo runs DPO; LoRA unless
        `algorithm_config` (an extra body key) says otherwise.
        """
        ...

    @webmethod(route="/v1/fine_tuning/jobs", method="GET", compat=OPENAI_FINE_TUNING)
    async def list_fine_tuning_jobs(self, request: ListFineTuningJobsRequest) -> FineTuningJobList:
        """List jobs, newest first, a page at a time; `metadata[key]=value` filters."""
        ...

    @webmethod(
        route="/v1/fine_tuning/jobs/{fine_tuning_job_id}", method="GET", compat=OPENAI_FINE_TUNING
    )
    async def retrieve_fine_tuning_job(self, fine_tuning_job_id: JobUuid) -> FineTuningJob:
        """A job as OpenAI describes one: status, fine-tuned model, trained tokens, error."""
        ...

    @webmethod(
        route="/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
        method="POST",
        compat=OPENAI_FINE_TUNING,
    )
    async def cancel_fine_tuning_job(self, fine_tuning_job_id: JobUuid) -> FineTuningJob:
        """Cancel a job; a job already finished is a 400."""
        ...

    @webmethod(
        route="/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
        method="GET",
        compat=OPENAI_FINE_TUNING,
    )
    async def list_fine_tuning_events(
        self, fine_tuning_job_id: JobUuid, request: PageRequest
    ) -> FineTuningJobEventList:
        """A job's events, newest first: creation, start, each step's metrics, checkpoints, end."""
        ...

    @webmethod(
        route="/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        method="GET",
        compat=OPENAI_FINE_TUNING,
    )
    async def list_fine_tuning_checkpoints(
        self, fine_tuning_job_id: JobUuid, request: PageRequest
    ) -> FineTuningJobCheckpointList:
        """A job's checkpoints, newest first, with their step and losses."""
        ...

    @webmethod(route="/v1/post-training/graders/run", method="POST")
    @webmethod(route="/v1/fine_tuning/alpha/graders/run", method="POST", compat=OPENAI_FINE_TUNING)
    async def run_grader(self, request: GraderRunRequest) -> GraderRunResponse:
        """Score one answer to one row with a grader, as training would: try a grader before
        a job. A grader that fails on the row scores 0 and says why in `metadata.errors`; an
        invalid grader is a 400 naming the field."""
        ...

    @webmethod(route="/v1/post-training/graders/validate", method="POST")
    @webmethod(
        route="/v1/fine_tuning/alpha/graders/validate", method="POST", compat=OPENAI_FINE_TUNING
    )
    async def validate_grader(self, request: GraderValidateRequest) -> GraderValidateResponse:
        """Check a grader (templates, pattern, schema, formula, metric, model, whether python
        graders are enabled) without running it; a 400 names what is wrong."""
        ...

    @webmethod(route="/v1/post-training/checkpoint-files/{token}", method="GET")
    async def download_checkpoint_file(self, token: Token) -> FileContent:
        """One file of a checkpoint, named by a URL from `external_weights_urls` (the token in
        the path is its credential)."""
        ...

    # -- Tinker's RestClient (the tinker SDK), over the same jobs and checkpoints -----------------

    @webmethod(route="/api/v1/client/config", method="POST", compat=TINKER)
    async def tinker_client_config(self, request: TinkerHello) -> TinkerClientConfig:
        """The SDK's first call: keys are taken as they are (no token exchange)."""
        ...

    @webmethod(route="/api/v1/client/dynamic_config", method="POST", compat=TINKER)
    async def tinker_dynamic_config(self, request: TinkerHello) -> TinkerDynamicConfig:
        """The SDK's second call; defaults."""
        ...

    @webmethod(route="/api/v1/telemetry", method="POST", compat=TINKER)
    async def tinker_telemetry(self, request: TinkerHello) -> TinkerAccepted:
        """The SDK's telemetry: accepted and dropped; nothing leaves the server."""
        ...

    @webmethod(route="/api/v1/healthz", method="GET", compat=TINKER)
    async def tinker_healthz(self) -> TinkerHealth:
        """Up (no key needed)."""
        ...

    @webmethod(route="/api/v1/get_server_capabilities", method="GET", compat=TINKER)
    async def tinker_server_capabilities(self) -> TinkerCapabilities:
        """The base models served here."""
        ...

    @webmethod(route="/api/v1/training_runs", method="GET", compat=TINKER)
    async def tinker_list_training_runs(self, request: TinkerPageRequest) -> TinkerTrainingRuns:
        """The caller's jobs as training runs, a page at a time (`accessible`: and those with a
        published checkpoint)."""
        ...

    @webmethod(route="/api/v1/training_runs/{training_run_id}", method="GET", compat=TINKER)
    async def tinker_get_training_run(
        self, training_run_id: JobUuid, request: TinkerScopeRequest
    ) -> TinkerTrainingRun:
        """A job as a run: base model, owner, LoRA rank, last checkpoints, metadata."""
        ...

    @webmethod(route="/api/v1/weights_info", method="POST", compat=TINKER)
    async def tinker_weights_info(self, request: TinkerWeightsInfoRequest) -> TinkerWeightsInfo:
        """What a checkpoint's weights are: base model, LoRA or not, rank, what was trained."""
        ...

    @webmethod(
        route="/api/v1/training_runs/{training_run_id}/checkpoints", method="GET", compat=TINKER
    )
    async def tinker_list_run_checkpoints(self, training_run_id: TinkerRunId) -> TinkerCheckpoints:
        """A run's checkpoints: a job's, or a training model's saved states."""
        ...

    @webmethod(route="/api/v1/checkpoints", method="GET", compat=TINKER)
    async def tinker_list_user_checkpoints(
        self, request: TinkerCheckpointPageRequest
    ) -> TinkerCheckpoints:
        """The caller's checkpoints across their runs, newest first, with a cursor."""
        ...

    @webmethod(
        route="/api/v1/training_runs/{training_run_id}/checkpoints/{checkpoint_kind}/"
        "{checkpoint_name}",
        method="DELETE",
        compat=TINKER,
    )
    async def tinker_delete_checkpoint(
        self, training_run_id: JobUuid, checkpoint_kind: TinkerKind, checkpoint_name: CheckpointId
    ) -> TinkerEmpty:
        """Delete a checkpoint (and the model it is served as)."""
        ...

    @webmethod(
        route="/api/v1/training_runs/{training_run_id}/checkpoints/{checkpoint_kind}/"
        "{checkpoint_name}/publish",
        method="POST",
        compat=TINKER,
    )
    async def tinker_publish_checkpoint(
        self, training_run_id: JobUuid, checkpoint_kind: TinkerKind, checkpoint_name: CheckpointId
    ) -> TinkerEmpty:
        """Publish it; 409 if it is already."""
        ...

    @webmethod(
        route="/api/v1/training_runs/{training_run_id}/checkpoints/{checkpoint_kind}/"
        "{checkpoint_name}/publish",
        method="DELETE",
        compat=TINKER,
    )
    async def tinker_unpublish_checkpoint(
        self, training_run_id: JobUuid, checkpoint_kind: TinkerKind, checkpoint_name: CheckpointId
    ) -> TinkerEmpty:
        """Unpublish it; 409 if it is not published."""
        ...

    @webmethod(
        route="/api/v1/training_runs/{training_run_id}/checkpoints/{checkpoint_kind}/"
        "{checkpoint_name}/ttl",
        method="PUT",
        compat=TINKER,
    )
    async def tinker_set_checkpoint_ttl(
        self,
        training_run_id: JobUuid,
        checkpoint_kind: TinkerKind,
        checkpoint_name: CheckpointId,
        request: TinkerTTLRequest,
    ) -> TinkerEmpty:
        """Expire it `ttl_seconds` from now; null keeps it."""
        ...

    @webmethod(
        route="/api/v1/training_runs/{training_run_id}/checkpoints/external_weights/"
        "{checkpoint_name}/external_weights_urls",
        method="GET",
        compat=TINKER,
    )
    async def tinker_external_weights_urls(
        self, training_run_id: JobUuid, checkpoint_name: CheckpointId
    ) -> TinkerExternalWeightsUrls:
        """A URL per file of the checkpoint, each usable with no key until `expires` (what
        `tinker checkpoint download tinker://<run>/external_weights/<name>` fetches)."""
        ...
