from __future__ import annotations

from typing import Protocol

from llama_post.apis.files.models import (
    DeleteFileResponse,
    FileObject,
    ListFilesRequest,
    ListFilesResponse,
    UploadFileRequest,
)
from llama_post.schema import V0_2, FileContent, creates, webmethod


class Files(Protocol):
    """Uploaded files, shaped like OpenAI's Files API so its SDK works unchanged."""

    @creates(file_id="/id")
    @webmethod(route="/v1/files", method="POST")
    @webmethod(route="/v1/openai/v1/files", method="POST", compat=V0_2)
    async def upload_file(self, request: UploadFileRequest) -> FileObject:
        """Upload a file.

        The content streams to disk; its size is limited by the provider's `max_upload_bytes`.
        With `expires_after`, the file is deleted that many seconds after its creation.
        """
        ...

    @webmethod(route="/v1/files", method="GET")
    @webmethod(route="/v1/openai/v1/files", method="GET", compat=V0_2)
    async def list_files(self, request: ListFilesRequest) -> ListFilesResponse:
        """List uploaded files, newest first unless `order=asc`."""
        ...

    @webmethod(route="/v1/files/{file_id}", method="GET")
    @webmethod(route="/v1/openai/v1/files/{file_id}", method="GET", compat=V0_2)
    async def retrieve_file(self, file_id: str) -> FileObject:
        """Get one file's metadata."""
        ...

    @webmethod(route="/v1/files/{file_id}/content", method="GET")
    @webmethod(route="/v1/openai/v1/files/{file_id}/content", method="GET", compat=V0_2)
    async def retrieve_file_content(self, file_id: str) -> FileContent:
        """Download a file's content."""
        ...

    @webmethod(route="/v1/files/{file_id}", method="DELETE")
    @webmethod(route="/v1/openai/v1/files/{file_id}", method="DELETE", compat=V0_2)
    async def delete_file(self, file_id: str) -> DeleteFileResponse:
        """Delete a file and its content."""
        ...
