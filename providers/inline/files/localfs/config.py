from pydantic import Field

from llama_post.schema import StrictModel, UserPath


class LocalFilesConfig(StrictModel):
    storage_dir: UserPath = Field(description="Where file content and the metadata database live.")
    max_upload_bytes: int = Field(1 << 30, ge=1, description="Larger uploads get a 413.")
