from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from llama_post.schema import MultipartRequest, StrictModel, Upload


class FilePurpose(StrEnum):
    fine_tune = "fine-tune"
    assistants = "assistants"
    batch = "batch"
    batch_output = "batch_output"
    vision = "vision"
    user_data = "user_data"
    evals = "evals"


class ExpiresAfter(StrictModel):
    """OpenAI's expiry: the file is deleted `seconds` after its creation (1 hour to 30 days).
    A form sends it as `expires_after[anchor]` and `expires_after[seconds]`."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2592000)

    @model_validator(mode="before")
    @classmethod
    def _json_part(cls, data: Any) -> Any:
        """A form part holding the object as JSON text (how OpenAPI encodes one by default)."""
        if isinstance(data, str):
            try:
                return json.loads(data)
            except json.JSONDecodeError:
                raise ValueError("expires_after: send an object, or its JSON text") from None
        return data


class UploadFileRequest(MultipartRequest):
    file: Upload
    purpose: FilePurpose
    expires_after: ExpiresAfter | None = None

    @field_validator("expires_after", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        """A form part holds the field as JSON text, `null` included (no expiry)."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("expires_after: send an object, or its JSON text") from None
        return value


class FileObject(BaseModel):
    """An uploaded file, in the shape of OpenAI's file object (plus its sha256)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    sha256: str
    expires_at: int | None = None
    status_details: str | None = None


class ListFilesRequest(StrictModel):
    after: str | None = Field(None, description="Return files after this file id.")
    limit: int = Field(10000, ge=1, le=10000)
    order: Literal["asc", "desc"] = "desc"
    purpose: FilePurpose | None = None


class ListFilesResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeleteFileResponse(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
