from llama_post.apis.files.api import Files
from llama_post.apis.files.models import (
    DeleteFileResponse,
    FileObject,
    FilePurpose,
    ListFilesRequest,
    ListFilesResponse,
    UploadFileRequest,
)

__all__ = [
    "DeleteFileResponse",
    "FileObject",
    "FilePurpose",
    "Files",
    "ListFilesRequest",
    "ListFilesResponse",
    "UploadFileRequest",
]
