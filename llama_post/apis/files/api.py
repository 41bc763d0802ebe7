from __future__ import annotations

from typing import Protocol

from llama_post.apis.files.models import (
    DeleteFileResponse,
    FileObject,
    ListFilesRequest,
    ListFilesResponse,
    UploadFileRequest,
)
from llama_post.schema import FileContent, creates, webmethod


class Files(Protocol):
    """Uploaded files, shaped like OpenAI's Files API so its SDK works unchanged."""

    @creates(file_id="/id")
    @webmethod(route="/v1/files", method="POST")
    async def upload_file(self, request: UploadFileRequest) -> FileObject:
        """Upload a file.

        The content streams to disk; its size is limited by the provider's `max_upload_bytes`.
        """
        ...

    @webmethod(route="/v1/files", method="GET")
    async def list_files(self, request: ListFilesRequest) -> ListFilesResponse:
        """List uploaded files, newest first unless `order=asc`."""
        ...

    @webmethod(route="/v1/files/{file_id}", method="GET")
    async def retrieve_file(self, file_id: str) -> FileObject:
        """Get one file's metadata."""
        ...

    @webmethod(route="/v1/files/{file_id}/content", method="GET")
    async def retrieve_file_content(self, file_id: str) -> FileContent:
        """Download a file's content."""
        ...

    @webmethod(route="/v1/files/{file_id}", method="DELETE")
    async def delete_file(self, file_id: str) -> DeleteFileResponse:
        """Delete a file and its content."""
        ...
