from pathlib import Path

from pydantic import Field, field_validator

from llama_post.schema import StrictModel


class LocalDatasetsConfig(StrictModel):
    storage_dir: Path = Field(description="Where rows and the metadata database live.")
    allowed_dirs: list[Path] = Field(
        [], description="Directories a `uri` source may read from; nothing else is readable."
    )
    max_row_bytes: int = Field(1 << 20, ge=64, description="A larger row is rejected.")
    max_reported_errors: int = Field(20, ge=1, description="Bad rows listed in one error.")

    @field_validator("storage_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("allowed_dirs")
    @classmethod
    def _expand_all(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser() for p in value]
