"""A job's checkpoints as the API shows them: listed with their metrics, packed into an archive
(written once beside the checkpoint), removed, and the final one published as the model
`ft/<job>` with the provider serving the trained model."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
from pathlib import Path

from llama_post import archives
from llama_post.apis.models import AdapterSource, HuggingFaceSource, Models, RegisterModelRequest
from llama_post.apis.post_training import (
    Checkpoint,
    JobStatus,
    LoraFinetuningConfig,
    TrainingMetrics,
)
from llama_post.archives import read_chunks
from llama_post.errors import ConflictError, InvalidRequestError, NotFoundError, UpstreamError
from llama_post.schema import FileContent
from providers.jobs.folder import checkpoints
from providers.jobs.store import TERMINAL, JobStore

log = logging.getLogger(__name__)


class JobCheckpoints:
    def __init__(self, store: JobStore, models: Models) -> None:
        self.store = store
        self.models = models

    def list(self, job_uuid: str, final_model: str | None) -> list[Checkpoint]:
        found = checkpoints(self.store.checkpoint_dir(job_uuid))
        out = []
        for i, (step, path) in enumerate(found):
            meta = json.loads((path / "checkpoint.json").read_text())
            resumable = any((path / n).is_file() for n in ("state.pt", "recipe_state.pt"))
            out.append(
                Checkpoint(
                    identifier=f"{job_uuid}/{path.name}",
                    checkpoint_id=path.name,
                    type="training" if resumable else "sampler",
                    size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                    created_at=meta["created_at"],
                    epoch=meta["epoch"],
                    step=step,
                    post_training_job_id=job_uuid,
                    path=str(path),
                    training_metrics=TrainingMetrics(
                        epoch=meta["epoch"],
                        train_loss=meta["train_loss"],
                        validation_loss=meta["validation_loss"],
                        perplexity=None
                        if "reward_margin" in meta  # a DPO loss is no cross-entropy
                        else _perplexity(meta["validation_loss"] or meta["train_loss"]),
                    ),
                    model_id=final_model if i == len(found) - 1 and meta.get("final") else None,
                )
            )
        return out

    def _named(self, job_uuid: str, checkpoint_id: str) -> Path:
        found = dict((p.name, p) for _, p in checkpoints(self.store.checkpoint_dir(job_uuid)))
        if checkpoint_id not in found:
            raise NotFoundError(
                f"job {job_uuid!r} has no checkpoint {checkpoint_id!r}", param="checkpoint_id"
            )
        return found[checkpoint_id]

    def folder(self, job_uuid: str, checkpoint_id: str) -> Path:
        """A checkpoint's folder: a 404 for a job or checkpoint that is not there."""
        self.store.existing(job_uuid)
        return self._named(job_uuid, checkpoint_id)

    async def archive(self, job_uuid: str, checkpoint_id: str) -> FileContent:
        """The checkpoint as a tar, written once beside it with its digest (`archives.packed`)."""
        self.store.existing(job_uuid)
        folder = self._named(job_uuid, checkpoint_id)
        name = f"{job_uuid}-{checkpoint_id}"
        path, sha256, size = await asyncio.to_thread(archives.packed, folder, name)
        return FileContent(
            chunks=read_chunks(path),
            media_type=archives.MEDIA_TYPE,
            filename=f"{name}.tar.gz",
            size=size,
            sha256=sha256,
        )

    async def remove(self, job_uuid: str, checkpoint_id: str, reason: str) -> None:
        """Delete a checkpoint's folder; the job's log (and so its events) says why."""
        row = self.store.existing(job_uuid)
        if JobStatus(row["status"]) not in TERMINAL:
            raise ConflictError(
                f"job {job_uuid!r} is {row['status']}: it resumes from its checkpoints; cancel it "
                "or let it finish first",
                param="job_uuid",
            )
        folder = self._named(job_uuid, checkpoint_id)
        await asyncio.to_thread(shutil.rmtree, folder)
        archives.forget(folder)
        with self.store.folder(job_uuid).log.open("a") as log_file:
            log_file.write(f"checkpoint {checkpoint_id} removed: {reason}\n")

    async def publish(self, job_uuid: str) -> tuple[str | None, str | None]:
        """Publish the final checkpoint as `ft/<job>` to the provider serving the trained model
        (an adapter is served over its base; hot-loaded where the provider is remote): the
        model's id, or a note saying why it is not served."""
        request = self.store.request(job_uuid)
        final = checkpoints(self.store.checkpoint_dir(job_uuid))[-1][1]
        model_id = f"ft/{job_uuid}"
        served = await self.models.get_model(request.model_id)
        if isinstance(request.tuning, LoraFinetuningConfig):
            base = served.base_model or served.id
            source: AdapterSource | HuggingFaceSource = AdapterSource(
                type="adapter", path=str(final), base_model=base
            )
        else:
            source = HuggingFaceSource(type="huggingface", path=str(final))
        registration = RegisterModelRequest(
            model_id=model_id,
            source=source,
            provider_id=served.provider_id,
            metadata={"job_uuid": job_uuid, "checkpoint": final.name},
        )
        try:
            await self.models.register_model(registration)
        except (InvalidRequestError, UpstreamError) as exc:
            # The weights are trained and kept: a provider that cannot take them now (its
            # upstream is down; a remote one serves no new full models) does not undo the job.
            if isinstance(exc, InvalidRequestError) and isinstance(source, AdapterSource):
                raise
            note = (
                f"trained, but provider {served.provider_id!r} did not serve it: {exc.message}; "
                f"register {final} with POST /v1/models"
            )
            log.warning("job %s: %s", job_uuid, note)
            return None, note
        return model_id, None


def _perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None
