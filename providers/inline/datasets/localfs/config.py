from pydantic import Field

from llama_post.schema import StrictModel, UserPath


class LocalDatasetsConfig(StrictModel):
    storage_dir: UserPath = Field(description="Where rows and the metadata database live.")
    allowed_dirs: list[UserPath] = Field(
        [], description="Directories a `uri` source may read from; nothing else is readable."
    )
    max_row_bytes: int = Field(1 << 20, ge=64, description="A larger row is rejected.")
    max_reported_errors: int = Field(20, ge=1, description="Bad rows listed in one error.")
