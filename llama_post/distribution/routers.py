"""Routers: one API served by several providers, each call sent to the provider that owns the id.

A router implements the same Protocol as its providers. Ids are looked up provider by provider;
creating something picks the provider the request names, or the first one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from llama_post.errors import ConflictError, InvalidRequestError, NotFoundError
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
                raise InvalidRequestError(
                    f"after: no file with id {request.after!r}", param="after"
                )
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


ROUTERS: dict[Api, Callable[[dict[str, Any]], Any]] = {
    Api.files: FilesRouter,
    Api.datasets: DatasetsRouter,
}
