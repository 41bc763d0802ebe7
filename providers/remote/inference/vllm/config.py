import posixpath
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, Field

from llama_post.schema import StrictModel, UserPath
from providers.remote.endpoint import RemoteEndpointConfig


class PathMapping(StrictModel):
    """One folder as this server sees it (`local`) and as the vLLM host does (`upstream`)."""

    local: Annotated[UserPath, AfterValidator(Path.resolve)]  # as adapter paths are resolved
    upstream: str = Field(min_length=1, description="An absolute path on the vLLM host.")

    def to_upstream(self, path: str) -> str | None:
        inside = _relative(path, str(self.local))
        return None if inside is None else str(PurePosixPath(self.upstream, inside))

    def to_local(self, path: str) -> str | None:
        inside = _relative(path, self.upstream)
        return None if inside is None else str(PurePosixPath(self.local, inside))


def _relative(path: str, folder: str) -> str | None:
    """`path` below `folder`, after `..` is resolved in it (so it cannot climb out)."""
    try:
        inside = PurePosixPath(posixpath.normpath(path)).relative_to(PurePosixPath(folder))
    except ValueError:
        return None
    return str(inside)


class VLLMInferenceConfig(RemoteEndpointConfig):
    """A vLLM server (`base_url`: `http://127.0.0.1:8000`; a trailing `/v1` is dropped; `api_key`:
    vLLM's --api-key, if it has one)."""

    max_lora_rank: int = Field(16, ge=1, description="vLLM's --max-lora-rank; above is a 400.")
    adapter_dirs: list[UserPath] = Field(
        [], description="Folders adapter paths may lie in (post-training's checkpoint_root)."
    )
    path_map: list[PathMapping] = Field(
        [],
        description="Folders both hosts see under different paths: adapters sent to vLLM, and "
        "the base model's folder read back for fine-tuning. Unmapped paths are sent as they are.",
    )

    @property
    def url(self) -> str:
        url = super().url
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def to_upstream(self, path: str) -> str:
        for mapping in self.path_map:
            if (mapped := mapping.to_upstream(path)) is not None:
                return mapped
        return path

    def to_local(self, path: str) -> str:
        for mapping in self.path_map:
            if (mapped := mapping.to_local(path)) is not None:
                return mapped
        return path
