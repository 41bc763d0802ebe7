"""Routers: one API served by several providers, each call sent to the provider that owns the id.

A router implements the same Protocol as its providers. Ids are looked up provider by provider;
creating something picks the provider the request names, or the first one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from llama_post.apis import Api
from llama_post.apis.datasets import (
    AppendRowsRequest,
    AppendRowsResponse,
    Dataset,
    Datasets,
    IterRowsRequest,
    IterRowsResponse,
    ListDatasetsResponse,
    RegisterDatasetRequest,
    UnregisterDatasetResponse,
)
from llama_post.apis.files import (
    DeleteFileResponse,
    FileObject,
    Files,
    ListFilesRequest,
    ListFilesResponse,
    UploadFileRequest,
)
from llama_post.apis.post_training import (
    ExportJob,
    ExportRequest,
    JobEvent,
    JobLogsResponse,
    JobMetricsResponse,
    ListExportsResponse,
    ListPostTrainingJobsResponse,
    MergeRequest,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobs,
    PostTrainingJobStatusResponse,
    PreferenceOptimizeRequest,
    PreflightResponse,
    ReinforceRequest,
    SupervisedFineTuneRequest,
    TrainingEstimate,
    TrainingRequest,
)
from llama_post.apis.post_training.access import InferenceAccess
from llama_post.errors import ConflictError, InvalidRequestError, NotFoundError
from llama_post.graders import GraderSettings
from llama_post.schema import FileContent

T = TypeVar("T")


async def _owner(
    providers: dict[str, T], probe: Callable[[T], Awaitable[object]], what: str, param: str
) -> T:
    for impl in providers.values():
        try:
            await probe(impl)
        except NotFoundError:
            continue
        return impl
    raise NotFoundError(f"no {what}", param=param)


class DatasetsRouter:
    def __init__(self, providers: dict[str, Datasets]) -> None:
        self.providers = providers

    async def _for(self, dataset_id: str) -> Datasets:
        return await _owner(
            self.providers,
            lambda p: p.get_dataset(dataset_id),
            f"dataset {dataset_id!r}",
            "dataset_id",
        )

    async def register_dataset(self, request: RegisterDatasetRequest) -> Dataset:
        if request.provider_id is None:
            names = ", ".join(self.providers)
            raise InvalidRequestError(
                f"provider_id: several providers serve datasets ({names}); name one",
                param="provider_id",
            )
        if request.provider_id not in self.providers:
            raise NotFoundError(
                f"provider_id: no datasets provider {request.provider_id!r}", param="provider_id"
            )
        for impl in self.providers.values():
            if request.dataset_id:
                try:
                    await impl.get_dataset(request.dataset_id)
                except NotFoundError:
                    continue
                raise ConflictError(
                    f"dataset {request.dataset_id!r} already exists", param="dataset_id"
                )
        return await self.providers[request.provider_id].register_dataset(request)

    async def list_datasets(self) -> ListDatasetsResponse:
        data = [d for p in self.providers.values() for d in (await p.list_datasets()).data]
        return ListDatasetsResponse(data=data)

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return await (await self._for(dataset_id)).get_dataset(dataset_id)

    async def unregister_dataset(self, dataset_id: str) -> UnregisterDatasetResponse:
        return await (await self._for(dataset_id)).unregister_dataset(dataset_id)

    async def iterrows(self, dataset_id: str, request: IterRowsRequest) -> IterRowsResponse:
        return await (await self._for(dataset_id)).iterrows(dataset_id, request)

    async def append_rows(self, dataset_id: str, request: AppendRowsRequest) -> AppendRowsResponse:
        return await (await self._for(dataset_id)).append_rows(dataset_id, request)


class FilesRouter:
    """Uploads go to the first provider; ids find their own."""

    def __init__(self, providers: dict[str, Files]) -> None:
        self.providers = providers

    async def _for(self, file_id: str) -> Files:
        return await _owner(
            self.providers, lambda p: p.retrieve_file(file_id), f"file {file_id!r}", "file_id"
        )

    async def upload_file(self, request: UploadFileRequest) -> FileObject:
        return await next(iter(self.providers.values())).upload_file(request)

    async def list_files(self, request: ListFilesRequest) -> ListFilesResponse:
        everything = ListFilesRequest(order=request.order, purpose=request.purpose)
        files = [f for p in self.providers.values() for f in (await p.list_files(everything)).data]
        files.sort(key=lambda f: (f.created_at, f.id), reverse=request.order == "desc")
        if request.after is not None:
            ids = [f.id for f in files]
            if request.after not in ids:
                raise NotFoundError(f"after: no file {request.after!r}", param="after")
            files = files[ids.index(request.after) + 1 :]
        page = files[: request.limit]
        return ListFilesResponse(
            data=page,
            has_more=len(files) > len(page),
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )

    async def retrieve_file(self, file_id: str) -> FileObject:
        return await (await self._for(file_id)).retrieve_file(file_id)

    async def retrieve_file_content(self, file_id: str) -> FileContent:
        return await (await self._for(file_id)).retrieve_file_content(file_id)

    async def delete_file(self, file_id: str) -> DeleteFileResponse:
        return await (await self._for(file_id)).delete_file(file_id)


class PostTrainingRouter:
    """A job is created on the provider its request names (`provider_id`, else the first);
    every later call finds the provider that holds the job."""

    def __init__(self, providers: dict[str, PostTrainingJobs]) -> None:
        self.providers = providers

    async def _for(self, job_uuid: str) -> PostTrainingJobs:
        return await _owner(
            self.providers, lambda p: p.get_job_status(job_uuid), f"job {job_uuid!r}", "job_uuid"
        )

    async def _runs(self, request: TrainingRequest) -> PostTrainingJobs:
        provider_id = request.provider_id or next(iter(self.providers))
        if provider_id not in self.providers:
            names = ", ".join(self.providers)
            raise NotFoundError(
                f"provider_id: no post-training provider {provider_id!r} (there are {names})",
                param="provider_id",
            )
        if request.job_uuid is not None:
            try:
                await self._for(request.job_uuid)
            except NotFoundError:
                pass
            else:
                raise ConflictError(f"job {request.job_uuid!r} already exists", param="job_uuid")
        return self.providers[provider_id]

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        return await (await self._runs(request)).supervised_fine_tune(request)

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        return await (await self._runs(request)).preference_optimize(request)

    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob:
        return await (await self._runs(request)).reinforce(request)

    def use_grader_settings(self, settings: GraderSettings) -> None:
        for provider in self.providers.values():
            provider.use_grader_settings(settings)

    def use_locations(self, usable: Callable[[Path], bool]) -> None:
        for provider in self.providers.values():
            provider.use_locations(usable)

    def use_inference_access(self, access: InferenceAccess) -> None:
        for provider in self.providers.values():
            provider.use_inference_access(access)

    def job_folders(self, job_uuid: str) -> list[Path]:
        return [f for provider in self.providers.values() for f in provider.job_folders(job_uuid)]

    async def preflight(self, request: SupervisedFineTuneRequest) -> PreflightResponse:
        return await self._named(request.provider_id).preflight(request)

    async def estimate(self, request: SupervisedFineTuneRequest) -> TrainingEstimate:
        return await self._named(request.provider_id).estimate(request)

    async def estimate_preference(self, request: PreferenceOptimizeRequest) -> TrainingEstimate:
        return await self._named(request.provider_id).estimate_preference(request)

    async def estimate_reinforce(self, request: ReinforceRequest) -> TrainingEstimate:
        return await self._named(request.provider_id).estimate_reinforce(request)

    def _named(self, provider_id: str | None) -> PostTrainingJobs:
        provider = self.providers.get(provider_id or next(iter(self.providers)))
        if provider is None:
            raise NotFoundError(
                f"provider_id: no post-training provider {provider_id!r}", param="provider_id"
            )
        return provider

    async def list_jobs(self) -> ListPostTrainingJobsResponse:
        jobs = [j for p in self.providers.values() for j in (await p.list_jobs()).data]
        return ListPostTrainingJobsResponse(data=jobs)

    async def get_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        return await (await self._for(job_uuid)).get_job_status(job_uuid)

    async def cancel_job(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        return await (await self._for(job_uuid)).cancel_job(job_uuid)

    async def get_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        return await (await self._for(job_uuid)).get_job_artifacts(job_uuid)

    async def checkpoint_archive(self, job_uuid: str, checkpoint_id: str) -> FileContent:
        return await (await self._for(job_uuid)).checkpoint_archive(job_uuid, checkpoint_id)

    async def remove_checkpoint(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        await (await self._for(job_uuid)).remove_checkpoint(job_uuid, checkpoint_id, reason)

    async def get_job_logs(self, job_uuid: str) -> JobLogsResponse:
        return await (await self._for(job_uuid)).get_job_logs(job_uuid)

    async def get_job_metrics(self, job_uuid: str) -> JobMetricsResponse:
        return await (await self._for(job_uuid)).get_job_metrics(job_uuid)

    async def stream_job_events(self, job_uuid: str) -> AsyncIterator[JobEvent]:
        return await (await self._for(job_uuid)).stream_job_events(job_uuid)

    # -- merge and export jobs: on the provider holding the checkpoint's job, else as named --

    async def _exports(self, request: MergeRequest | ExportRequest) -> PostTrainingJobs:
        if request.checkpoint is not None and request.provider_id is None:
            return await self._for(request.checkpoint.split("/")[0])
        return self._named(request.provider_id)

    async def _export_for(self, export_id: str) -> PostTrainingJobs:
        return await _owner(
            self.providers, lambda p: p.get_export(export_id), f"export {export_id!r}", "export_id"
        )

    async def merge_adapter(self, request: MergeRequest) -> ExportJob:
        return await (await self._exports(request)).merge_adapter(request)

    async def export_model(self, request: ExportRequest) -> ExportJob:
        return await (await self._exports(request)).export_model(request)

    async def list_exports(self) -> ListExportsResponse:
        found = [e for p in self.providers.values() for e in (await p.list_exports()).data]
        return ListExportsResponse(data=found)

    async def get_export(self, export_id: str) -> ExportJob:
        return await (await self._export_for(export_id)).get_export(export_id)

    async def cancel_export(self, export_id: str) -> ExportJob:
        return await (await self._export_for(export_id)).cancel_export(export_id)

    async def export_download(self, export_id: str) -> FileContent:
        return await (await self._export_for(export_id)).export_download(export_id)


ROUTERS: dict[Api, Callable[[dict[str, Any]], Any]] = {
    Api.files: FilesRouter,
    Api.datasets: DatasetsRouter,
    Api.post_training: PostTrainingRouter,
}
