"""Inference on a remote llama-post: its models, served here under their own ids.

Chat, completions and their batches are the remote's routes (`RemoteApi`); the models are the
ones the remote serves, bases and adapters alike (`discover`), each registered here with a
`provider_model` source naming the remote's id. Weights stay there (`weights` is null), so a job
here cannot start from them.

An adapter registered here over one of them (a folder: a job's `ft/<job>`, trained here or
imported from a trainer's archive) is pushed: packed as a tar.gz, uploaded through the remote's
Files API, registered there from that archive under the same id over the remote's base (which
checks it fits), the upload then deleted; unregistering it here unregisters it there. An id the
remote already serves as an adapter over that base is taken as the one pushed before (a front
that restarts loads its adapters again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from llama_post.apis.files import FilePurpose, UploadFileRequest
from llama_post.apis.inspect import ProviderHealth
from llama_post.apis.models import (
    MODEL_ID_PATTERN,
    AdapterSource,
    ArchiveSource,
    ListModelsResponse,
    Model,
    ModelInfo,
    ModelSource,
    ProviderModelSource,
    RegisterModelRequest,
)
from llama_post.errors import ConflictError, InvalidRequestError, NotFoundError
from llama_post.schema import UploadedFile
from providers.remote.llama_post.client import RemoteApi


class RemoteInference:
    def __init__(self, inference: RemoteApi, models: RemoteApi, files: RemoteApi) -> None:
        self.inference = inference
        self.models = models
        self.files = files
        self.ids: dict[str, str] = {}  # model id here -> the remote's
        self.pushed: set[str] = set()  # adapters pushed from here: unregistered there with them

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inference"], name)

    async def _call(self, name: str, request: Any) -> Any:
        remote_id = self.ids.get(request.model, request.model)
        method = getattr(self.inference, name)
        return await method(request.model_copy(update={"model": remote_id}))

    async def chat_completion(self, request: Any) -> Any:
        return await self._call("chat_completion", request)

    async def completion(self, request: Any) -> Any:
        return await self._call("completion", request)

    async def batch_chat_completion(self, request: Any) -> Any:
        return await self._call("batch_chat_completion", request)

    async def batch_completion(self, request: Any) -> Any:
        return await self._call("batch_completion", request)

    async def discover(self) -> list[RegisterModelRequest]:
        listed: ListModelsResponse = await self.models.list_models()
        return [
            RegisterModelRequest(
                model_id=m.id,
                source=ProviderModelSource(type="provider_model", provider_model_id=m.id),
            )
            for m in listed.data
            if re.match(MODEL_ID_PATTERN, m.id)
        ]

    async def check_source(self, source: ModelSource) -> Path | None:
        if isinstance(source, AdapterSource):  # pushed to the remote when loaded
            path = Path(source.path)
            if not (path / "adapter_config.json").is_file():
                raise NotFoundError(
                    f"source.path: no adapter folder at {source.path}", param="source.path"
                )
            return path
        if not isinstance(source, ProviderModelSource):
            raise InvalidRequestError(
                f"source.type: remote::llama-post serves the models its remote serves, and "
                f"adapters over them (pushed there); register {source.type} sources there and "
                "they appear here",
                param="source.type",
            )
        return None

    async def load_model(self, model: Model, base: Model | None) -> ModelInfo:
        await self.check_source(model.source)
        if isinstance(model.source, AdapterSource):
            assert base is not None
            name = await self._push(
                model.id, Path(model.source.path), self.ids.get(base.id, base.id)
            )
            self.pushed.add(model.id)
        else:
            assert isinstance(model.source, ProviderModelSource)
            name = model.source.provider_model_id
        try:
            remote: Model = await self.models.get_model(name)
        except NotFoundError:
            raise NotFoundError(
                f"source.provider_model_id: {self.models.client.base_url} serves no {name!r}",
                param="source.provider_model_id",
            ) from None
        self.ids[model.id] = name
        return ModelInfo(
            context_length=remote.context_length,
            parameter_count=remote.parameter_count,
            has_chat_template=remote.has_chat_template,
            generation_config=remote.sampling(),
            provider_model_id=name,
            max_lora_rank=remote.max_lora_rank,
            dtype=remote.dtype,
        )

    async def unload_model(self, model_id: str) -> None:
        name = self.ids.pop(model_id, None)
        if model_id in self.pushed and name is not None:
            self.pushed.discard(model_id)
            with contextlib.suppress(NotFoundError):  # gone there already
                await self.models.unregister_model(name)

    async def _push(self, model_id: str, folder: Path, base: str) -> str:
        """Register the adapter in `folder` on the remote, over its base `base`, as `model_id`
        (unless it is there already, over that base); the remote's id."""
        try:
            there: Model = await self.models.get_model(model_id)
        except NotFoundError:
            pass
        else:
            if there.kind == "adapter" and there.base_model == base:
                return model_id
            raise ConflictError(
                f"model_id: {self.models.client.base_url} serves another {model_id!r}; register "
                "the adapter under another id",
                param="model_id",
            )
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            digest = await asyncio.to_thread(_pack, folder, archive)
            with archive.open("rb") as f:
                upload = UploadFileRequest(
                    file=UploadedFile(filename=archive.name, file=f),
                    purpose=FilePurpose.user_data,
                )
                uploaded = await self.files.upload_file(upload)
        try:
            source = ArchiveSource(
                type="archive", file_id=uploaded.id, base_model=base, sha256=digest
            )
            await self.models.register_model(RegisterModelRequest(model_id=model_id, source=source))
        finally:
            with contextlib.suppress(NotFoundError):
                await self.files.delete_file(uploaded.id)
        return model_id

    async def health(self) -> ProviderHealth:
        return await self.inference.health()

    async def shutdown(self) -> None:
        await self.inference.shutdown()


def _pack(folder: Path, archive: Path) -> str:
    """The adapter's files (no links) as `adapter/...` in a tar.gz; its sha256."""
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(Path("adapter", path.relative_to(folder))))
    return hashlib.sha256(archive.read_bytes()).hexdigest()
