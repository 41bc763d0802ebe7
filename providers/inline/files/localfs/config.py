from pathlib import Path

from pydantic import Field, field_validator

from llama_post.schema import StrictModel


class LocalFilesConfig(StrictModel):
    storage_dir: Path = Field(description="Where file content and the metadata database live.")
    max_upload_bytes: int = Field(1 << 30, ge=1, description="Larger uploads get a 413.")

    @field_validator("storage_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()
