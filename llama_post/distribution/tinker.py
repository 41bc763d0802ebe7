"""Tinker's RestClient surface (`/api/v1`), over llama-post's jobs and their checkpoints: a job
is a training run, its checkpoints are Tinker's checkpoints, and every owner rule is the one
`Checkpoints` and the route guards apply to the native routes. A training session's model is a
run too, its saved states (`weights`, `sampler_weights`) its checkpoints, owned as its session."""

from __future__ import annotations

import datetime
import re
from typing import Any

from llama_post.apis.post_training import Checkpoint, LoraFinetuningConfig
from llama_post.apis.post_training.jobs import (
    CheckpointTTLRequest,
    ListCheckpointsRequest,
)
from llama_post.apis.post_training.tinker import (
    KIND_OF_TYPE,
    TinkerAccepted,
    TinkerCapabilities,
    TinkerCheckpoint,
    TinkerCheckpointPageRequest,
    TinkerCheckpoints,
    TinkerClientConfig,
    TinkerCursor,
    TinkerDynamicConfig,
    TinkerEmpty,
    TinkerExternalWeightsUrls,
    TinkerHealth,
    TinkerPageRequest,
    TinkerScopeRequest,
    TinkerSupportedModel,
    TinkerTrainingRun,
    TinkerTrainingRuns,
    TinkerTTLRequest,
    TinkerWeightsInfo,
    TinkerWeightsInfoRequest,
)
from llama_post.apis.training_sessions import InteractiveTraining, SavedState
from llama_post.distribution.checkpoints import Checkpoints
from llama_post.errors import NotFoundError

SESSION_RUN = re.compile(r"ts-[0-9a-f]{16}:train:[0-9]{1,6}")
PAGE = 1000  # the most checkpoints the native list gives at once


class TinkerCheckpointsService(Checkpoints):
    """`Checkpoints` with Tinker's names for runs and checkpoints beside the native ones."""

    sessions: InteractiveTraining | None = None  # set by the stack, where sessions are served

    # -- the handshake -------------------------------------------------------------------------

    async def tinker_client_config(self, request: Any) -> TinkerClientConfig:
        return TinkerClientConfig()

    async def tinker_dynamic_config(self, request: Any) -> TinkerDynamicConfig:
        return TinkerDynamicConfig()

    async def tinker_telemetry(self, request: Any) -> TinkerAccepted:
        return TinkerAccepted()

    async def tinker_healthz(self) -> TinkerHealth:
        return TinkerHealth()

    async def tinker_server_capabilities(self) -> TinkerCapabilities:
        models = (await self.models.list_models()).data
        return TinkerCapabilities(
            supported_models=[
                TinkerSupportedModel(model_name=m.id, max_context_length=m.context_length)
                for m in models
                if m.kind == "base"
            ]
        )

    # -- training runs -------------------------------------------------------------------------

    async def tinker_list_training_runs(self, request: TinkerPageRequest) -> TinkerTrainingRuns:
        runs = []
        for job in (await self.raw.list_jobs()).data:
            if self.owners.owns("job", job.job_uuid) or (
                request.access_scope == "accessible" and self._published_in(job.job_uuid)
            ):
                runs.append(job.job_uuid)
        page = runs[request.offset : request.offset + request.limit]
        return TinkerTrainingRuns(
            training_runs=[await self._run(job_uuid) for job_uuid in page],
            cursor=TinkerCursor(offset=request.offset, limit=request.limit, total_count=len(runs)),
        )

    async def tinker_get_training_run(
        self, training_run_id: str, request: TinkerScopeRequest
    ) -> TinkerTrainingRun:
        return await self._run(training_run_id)

    async def tinker_weights_info(self, request: TinkerWeightsInfoRequest) -> TinkerWeightsInfo:
        run, _, name = request.tinker_path.removeprefix("tinker://").split("/")
        await self._find(run, name)  # the caller may read it: theirs, or published
        status = await self.raw.get_job_status(run)
        tuning = status.request.tuning if status.request else None
        lora = tuning if isinstance(tuning, LoraFinetuningConfig) else None
        return TinkerWeightsInfo(
            base_model=status.model,
            is_lora=lora is not None,
            lora_rank=lora.rank if lora else None,
            train_attn=True if lora else None,
            train_mlp=lora.apply_lora_to_mlp if lora else None,
            train_unembed=lora.apply_lora_to_output if lora else None,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    async def tinker_list_run_checkpoints(self, training_run_id: str) -> TinkerCheckpoints:
        if SESSION_RUN.fullmatch(training_run_id):
            if self.sessions is None or not self.owners.owns("session", training_run_id):
                missing = f"no training run {training_run_id!r}"
                raise NotFoundError(missing, param="training_run_id")
            states = (await self.sessions.list_model_states(training_run_id)).data
            return TinkerCheckpoints(checkpoints=[_saved(s) for s in states])
        found = (await self.list_job_checkpoints(training_run_id)).data
        return TinkerCheckpoints(checkpoints=[_tinker(c) for c in found])

    async def tinker_list_user_checkpoints(
        self, request: TinkerCheckpointPageRequest
    ) -> TinkerCheckpoints:
        """The jobs' checkpoints and the sessions' saved states of the caller, newest first."""
        states = [] if self.sessions is None else (await self.sessions.list_states()).data
        states = [s for s in states if self.owners.owns("session", s.training_model_id)]
        if not states:  # the native list pages the jobs' checkpoints itself
            page = await self.list_checkpoints(
                ListCheckpointsRequest(limit=request.limit, offset=request.offset)
            )
            return TinkerCheckpoints(
                checkpoints=[_tinker(c) for c in page.data],
                cursor=TinkerCursor(offset=page.offset, limit=page.limit, total_count=page.total),
            )
        found = [_saved(s) for s in states]
        while True:
            jobs = len(found) - len(states)
            page = await self.list_checkpoints(ListCheckpointsRequest(limit=PAGE, offset=jobs))
            found += [_tinker(c) for c in page.data]
            if not page.data or jobs + len(page.data) >= page.total:
                break
        found.sort(key=lambda c: c.time, reverse=True)
        return TinkerCheckpoints(
            checkpoints=found[request.offset : request.offset + request.limit],
            cursor=TinkerCursor(offset=request.offset, limit=request.limit, total_count=len(found)),
        )

    async def tinker_delete_checkpoint(
        self, training_run_id: str, checkpoint_kind: str, checkpoint_name: str
    ) -> TinkerEmpty:
        await self.delete_checkpoint(training_run_id, checkpoint_name)
        return TinkerEmpty()

    async def tinker_publish_checkpoint(
        self, training_run_id: str, checkpoint_kind: str, checkpoint_name: str
    ) -> TinkerEmpty:
        await self.publish_checkpoint(training_run_id, checkpoint_name)
        return TinkerEmpty()

    async def tinker_unpublish_checkpoint(
        self, training_run_id: str, checkpoint_kind: str, checkpoint_name: str
    ) -> TinkerEmpty:
        await self.unpublish_checkpoint(training_run_id, checkpoint_name)
        return TinkerEmpty()

    async def tinker_set_checkpoint_ttl(
        self,
        training_run_id: str,
        checkpoint_kind: str,
        checkpoint_name: str,
        request: TinkerTTLRequest,
    ) -> TinkerEmpty:
        ttl = CheckpointTTLRequest(ttl_seconds=request.ttl_seconds)
        await self.set_checkpoint_ttl(training_run_id, checkpoint_name, ttl)
        return TinkerEmpty()

    async def tinker_external_weights_urls(
        self, training_run_id: str, checkpoint_name: str
    ) -> TinkerExternalWeightsUrls:
        urls, expires = await self.file_urls(training_run_id, checkpoint_name)
        return TinkerExternalWeightsUrls(urls=urls, expires=_time(expires))

    # -- helpers -------------------------------------------------------------------------------

    async def _run(self, job_uuid: str) -> TinkerTrainingRun:
        status = await self.raw.get_job_status(job_uuid)
        request = status.request
        tuning = request.tuning if request else None
        lora = tuning if isinstance(tuning, LoraFinetuningConfig) else None
        found = [
            self._described(c)
            for c in status.checkpoints
            if self.owners.visible("checkpoint", c.identifier)
        ]
        training = [c for c in found if c.type == "training"]
        sampler = [c for c in found if c.type == "sampler"]
        stamps = [status.completed_at, status.started_at, status.scheduled_at]
        return TinkerTrainingRun(
            training_run_id=job_uuid,
            base_model=status.model,
            model_owner=self.owners.owner_of("job", job_uuid) or "local",
            is_lora=lora is not None,
            lora_rank=lora.rank if lora else None,
            last_request_time=_time(max(s for s in stamps if s is not None)),
            corrupted=False,
            last_checkpoint=_tinker(training[-1]) if training else None,
            last_sampler_checkpoint=_tinker(sampler[-1]) if sampler else None,
            user_metadata=status.metadata or None,
        )

    def _published_in(self, job_uuid: str) -> bool:
        return self.owners.any_public("checkpoint", f"{job_uuid}/")


def _tinker(found: Checkpoint) -> TinkerCheckpoint:
    kind = KIND_OF_TYPE[found.type]
    return TinkerCheckpoint(
        checkpoint_id=f"{kind}/{found.checkpoint_id}",
        checkpoint_type=found.type,
        time=_time(found.created_at),
        tinker_path=f"tinker://{found.post_training_job_id}/{kind}/{found.checkpoint_id}",
        size_bytes=found.size_bytes,
        public=found.public,
        expires_at=_time(found.expires_at) if found.expires_at else None,
    )


def _saved(state: SavedState) -> TinkerCheckpoint:
    kind = "weights" if state.kind == "state" else "sampler_weights"
    return TinkerCheckpoint(
        checkpoint_id=f"{kind}/{state.name}",
        checkpoint_type="training" if state.kind == "state" else "sampler",
        time=_time(state.created_at),
        tinker_path=f"tinker://{state.training_model_id}/{kind}/{state.name}",
        size_bytes=state.size_bytes,
    )


def _time(stamp: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC)
