"""Interactive training sessions over local worker processes: the TrainingSessions API's
native methods. Each training model is one worker (`peft/session_worker.py`), started like a
job's (dying with the server), driven over its stdin and stdout one command at a time, and
writing its log beside its saved states:

    <storage_dir>/sessions/<session_id>/session.json
    <storage_dir>/sessions/<session_id>/<index>/model.json, worker.log
    <storage_dir>/sessions/<session_id>/<index>/<state|sampler>/<name>/   a PEFT folder

A session not heard from for `session_timeout_seconds` is finished (its workers stopped).
Saved states outlive sessions and restarts: a new model may start from any of the caller's.

Each worker beats the job machinery's heartbeat (`heartbeat.json` in its folder, `folder.py`);
the watchdog kills one whose heartbeat is older than `stall_seconds` (stopped, or wedged), and
its model's call in flight, and every call after, fails naming why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_post.apis.models import Models
from llama_post.apis.training_sessions import (
    CreateSessionRequest,
    CreateTrainingModelRequest,
    FinishSessionRequest,
    ForwardBackwardRequest,
    ForwardBackwardResult,
    LoadStateRequest,
    LoraSettings,
    OptimStepRequest,
    OptimStepResult,
    SavedState,
    SavedStateList,
    SaveStateRequest,
    TrainingModel,
    TrainingSession,
    TrainingSessionList,
)
from llama_post.errors import (
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    RateLimitError,
)
from providers.jobs.config import LocalSessionsConfig
from providers.jobs.folder import read_heartbeat
from providers.jobs.launch import die_with_parent

log = logging.getLogger(__name__)
WORKER = "providers.inline.post_training.peft.session_worker"
# the ids that name folders: anything else names nothing
SESSION = re.compile(r"ts-[0-9a-f]{16}")
MODEL = re.compile(r"(ts-[0-9a-f]{16}):train:([0-9]{1,6})")
STATE = re.compile(MODEL.pattern + r"/(state|sampler)/([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
LOSS_INPUTS = {
    "cross_entropy": ("weights",),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
}


class WorkerGone(LlamaPostError):
    """A training model's worker is no longer running."""


@dataclass
class Worker:
    """A training model's process, one command at a time."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    heartbeat: Path
    started_at: float = field(default_factory=time.time)
    stalled: str | None = None  # why the watchdog killed it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def call(self, op: str, **command: Any) -> Any:
        async with self.lock:
            stdin, stdout = self.proc.stdin, self.proc.stdout
            assert stdin is not None and stdout is not None
            line = b""
            if self.proc.returncode is None:
                with contextlib.suppress(ConnectionError):
                    stdin.write(json.dumps({"op": op, **command}).encode() + b"\n")
                    await stdin.drain()
                    line = await stdout.readline()
            if not line:
                code = await self.proc.wait()
                if self.stalled is not None:
                    raise WorkerGone(
                        f"the worker of training model {self.name} was killed: {self.stalled}; "
                        "create the model again, from its last saved state"
                    )
                raise WorkerGone(
                    f"the worker of training model {self.name} has died (exit code {code}); "
                    f"create the model again, from its last saved state. The end of its log: "
                    f"{_tail(self.log_path)}"
                )
            reply = json.loads(line)
            if not reply["ok"]:
                if reply["category"] == "user":
                    raise InvalidRequestError(reply["error"])
                raise LlamaPostError(f"training model {self.name}: {reply['error']}")
            return reply["result"]

    def watch(self, now: float, limit: float) -> None:
        """Kill the worker if its last heartbeat (or, before any, its start) is older than
        `limit`."""
        if self.proc.returncode is not None or self.stalled is not None:
            return
        beat = read_heartbeat(self.heartbeat) or {"time": self.started_at, "phase": "loading"}
        quiet = now - max(float(beat["time"]), self.started_at)
        if quiet > limit:
            self.stalled = (
                f"it stalled in {beat.get('phase')}: no heartbeat for {quiet:.0f} s (the limit, "
                f"the provider's stall_seconds, is {limit:g} s)"
            )
            log.warning("training model %s: %s", self.name, self.stalled)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # a stopped or wedged process ignores SIGTERM

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


@dataclass
class Live:
    record: TrainingModel
    folder: Path
    worker: Worker | None


class LocalSessions:
    def __init__(self, config: LocalSessionsConfig, models: Models) -> None:
        self.config = config
        self.models = models
        self.root = config.storage_dir / "sessions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.sessions: dict[str, TrainingSession] = {}
        self.live: dict[str, Live] = {}
        self.creating: set[str] = set()
        self.reaper: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.reaper = asyncio.get_running_loop().create_task(self._reap())
        self.watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def shutdown(self) -> None:
        for task in (self.reaper, self.watchdog):
            if task is not None:
                task.cancel()
        for live in list(self.live.values()):
            if live.worker is not None:
                await live.worker.stop()

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(self, request: CreateSessionRequest) -> TrainingSession:
        now = int(time.time())
        session = TrainingSession(
            session_id=f"ts-{secrets.token_hex(8)}",
            created_at=now,
            last_heartbeat_at=now,
            status="active",
            training_models=[],
            metadata=request.metadata,
        )
        folder = self.root / session.session_id
        folder.mkdir()
        (folder / "session.json").write_text(session.model_dump_json())
        self.sessions[session.session_id] = session
        return session

    async def list_sessions(self) -> TrainingSessionList:
        return TrainingSessionList(data=list(self.sessions.values()))

    async def get_session(self, session_id: str) -> TrainingSession:
        session = self.sessions.get(session_id)
        if session is not None:
            return session
        stored = self.root / session_id / "session.json"
        if not SESSION.fullmatch(session_id) or not stored.is_file():
            raise NotFoundError(f"no training session {session_id!r}", param="session_id")
        # a session of an earlier run of the server: its workers are gone, its states kept
        found = TrainingSession.model_validate_json(stored.read_text())
        return found.model_copy(update={"status": "finished"})

    async def heartbeat_session(self, session_id: str) -> TrainingSession:
        session = await self._active(session_id)
        session.last_heartbeat_at = int(time.time())
        return session

    async def finish_session(
        self, session_id: str, request: FinishSessionRequest
    ) -> TrainingSession:
        session = await self.get_session(session_id)
        session.status = "finished"
        for model_id in session.training_models:
            live = self.live.pop(model_id, None)
            if live is not None and live.worker is not None:
                await live.worker.stop()
        return session

    async def _active(self, session_id: str) -> TrainingSession:
        session = await self.get_session(session_id)
        if session.status != "active":
            raise ConflictError(
                f"training session {session_id} is finished; open a new one",
                param="session_id",
            )
        return session

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.config.session_timeout_seconds / 2))
            deadline = time.time() - self.config.session_timeout_seconds
            for session in list(self.sessions.values()):
                if session.status == "active" and session.last_heartbeat_at < deadline:
                    log.info("training session %s timed out", session.session_id)
                    await self.finish_session(session.session_id, FinishSessionRequest())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval_seconds)
            now = time.time()
            for live in list(self.live.values()):
                if live.worker is not None:
                    live.worker.watch(now, self.config.stall_seconds)

    # -- training models -----------------------------------------------------------------------

    async def create_training_model(
        self, session_id: str, request: CreateTrainingModelRequest
    ) -> TrainingModel:
        session = await self._active(session_id)
        index = request.index if request.index is not None else len(session.training_models)
        model_id = f"{session_id}:train:{index}"
        if model_id in self.live or model_id in self.creating:
            raise ConflictError(f"training model {model_id} exists", param="index")
        if len(self.live) + len(self.creating) >= self.config.max_live_models:
            raise RateLimitError(
                f"this server runs {self.config.max_live_models} training models at once; "
                "finish a session (or wait for one to time out) first"
            )
        self.creating.add(model_id)
        try:
            return await self._create(session, model_id, request)
        finally:
            self.creating.discard(model_id)

    async def _create(
        self, session: TrainingSession, model_id: str, request: CreateTrainingModelRequest
    ) -> TrainingModel:
        state = self._state_folder(request.from_state) if request.from_state else None
        saved = json.loads((state / "state.json").read_text()) if state else None
        base_model = request.base_model
        if saved and base_model != saved["base_model"]:
            raise InvalidRequestError(
                f"base_model: the state was trained over {saved['base_model']!r}, not "
                f"{base_model!r}",
                param="base_model",
            )
        lora = LoraSettings.model_validate(saved["lora"]) if saved else None
        lora = request.lora or lora or LoraSettings()
        if saved and lora.model_dump() != saved["lora"]:
            raise InvalidRequestError(
                "lora: a saved state keeps its own adapter settings; leave lora out",
                param="lora",
            )
        base = await self._base_folder(base_model)
        folder = self.root / session.session_id / model_id.rsplit(":", 1)[1]
        folder.mkdir(parents=True, exist_ok=True)
        record = TrainingModel(
            training_model_id=model_id,
            session_id=session.session_id,
            base_model=base_model,
            lora=lora,
            tokenizer=str(base),
            steps=0,
            status="ready",
        )
        worker = await self._start_worker(model_id, folder)
        try:
            await worker.call(
                "init",
                base=str(base),
                lora=lora.model_dump(),
                device=self._device(),
                threads=self.config.torch_threads,
            )
            if state is not None:
                done = await worker.call(
                    "load", folder=str(state), optimizer=request.with_optimizer
                )
                record.steps = done["steps"]
        except BaseException:
            await worker.stop()
            raise
        (folder / "model.json").write_text(record.model_dump_json())
        self.live[model_id] = Live(record, folder, worker)
        session.training_models.append(model_id)
        return record

    async def get_training_model(self, training_model_id: str) -> TrainingModel:
        return self._live(training_model_id).record

    async def forward_backward(
        self, training_model_id: str, request: ForwardBackwardRequest
    ) -> ForwardBackwardResult:
        live = self._live(training_model_id)
        data = [_checked(i, d.model_dump(), request.loss) for i, d in enumerate(request.data)]
        done = await self._call(
            live,
            "forward_backward",
            data=data,
            loss=request.loss,
            config=request.loss_config,
            forward_only=request.forward_only,
        )
        return ForwardBackwardResult(
            outputs=done["outputs"], loss=done["loss"], metrics={"loss:sum": done["loss"]}
        )

    async def optim_step(
        self, training_model_id: str, request: OptimStepRequest
    ) -> OptimStepResult:
        live = self._live(training_model_id)
        done = await self._call(live, "optim_step", adam=request.adam.model_dump())
        live.record.steps = done["step"]
        rate = request.adam.learning_rate
        metrics = {"grad_norm:mean": done["grad_norm"], "learning_rate:mean": rate}
        return OptimStepResult(step=done["step"], metrics=metrics)

    async def save_state(self, training_model_id: str, request: SaveStateRequest) -> SavedState:
        live = self._live(training_model_id)
        target = live.folder / request.kind / request.name
        if target.exists() and not request.overwrite:
            raise ConflictError(
                f"{training_model_id} has a saved {request.kind} {request.name!r}; pick another "
                "name, or set overwrite",
                param="name",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        await self._call(live, "save", folder=str(target), optimizer=request.kind == "state")
        saved = SavedState(
            training_model_id=training_model_id,
            kind=request.kind,
            name=request.name,
            reference=f"{training_model_id}/{request.kind}/{request.name}",
            path=str(target),
            base_model=live.record.base_model,
            created_at=int(time.time()),
            size_bytes=sum(f.stat().st_size for f in target.rglob("*") if f.is_file()),
        )
        meta = {**saved.model_dump(), "lora": live.record.lora.model_dump()}
        (target / "state.json").write_text(json.dumps(meta))
        return saved

    async def load_state(self, training_model_id: str, request: LoadStateRequest) -> TrainingModel:
        live = self._live(training_model_id)
        folder = self._state_folder(request.from_state)
        saved = json.loads((folder / "state.json").read_text())
        if saved["base_model"] != live.record.base_model or saved["lora"] != (
            live.record.lora.model_dump()
        ):
            raise InvalidRequestError(
                f"from_state: the state was trained over {saved['base_model']!r} with other "
                "adapter settings than this model's; create a model from it instead",
                param="from_state",
            )
        optimizer = request.with_optimizer and saved["kind"] == "state"
        done = await self._call(live, "load", folder=str(folder), optimizer=optimizer)
        live.record.steps = done["steps"]
        return live.record

    async def get_state(self, training_model_id: str, kind: str, name: str) -> SavedState:
        folder = self._state_folder(f"{training_model_id}/{kind}/{name}", "name")
        return _state(folder / "state.json")

    async def list_model_states(self, training_model_id: str) -> SavedStateList:
        found = MODEL.fullmatch(training_model_id)
        folder = self.root / found.group(1) / found.group(2) if found else None
        if folder is None or not (folder / "model.json").is_file():
            raise NotFoundError(
                f"no training model {training_model_id!r}", param="training_model_id"
            )
        return SavedStateList(data=[_state(f) for f in _by_age(folder.glob("*/*/state.json"))])

    async def list_states(self) -> SavedStateList:
        found = _by_age(self.root.glob("ts-*/*/*/*/state.json"))
        return SavedStateList(data=[_state(f) for f in reversed(found)])

    def session_folders(self, session_id: str) -> list[Path]:
        """Where a session's states lie (another owner may not name a path in it)."""
        return [self.root / session_id]

    # -- helpers -------------------------------------------------------------------------------

    def _live(self, training_model_id: str) -> Live:
        live = self.live.get(training_model_id)
        if live is None and MODEL.fullmatch(training_model_id):
            session = training_model_id.split(":", 1)[0]
            stored = self.root / session / training_model_id.rsplit(":", 1)[-1] / "model.json"
            if stored.is_file():
                raise ConflictError(
                    f"training model {training_model_id} is finished (its session ended, or "
                    "the server restarted); create a model from one of its saved states",
                    param="training_model_id",
                )
        if live is None:
            raise NotFoundError(
                f"no training model {training_model_id!r}", param="training_model_id"
            )
        return live

    async def _call(self, live: Live, op: str, **command: Any) -> Any:
        assert live.worker is not None
        session = self.sessions.get(live.record.session_id)
        if session is not None:
            session.last_heartbeat_at = int(time.time())  # a call is a sign of life too
        try:
            return await live.worker.call(op, **command)
        except WorkerGone:
            live.record.status = "failed"
            raise

    def _state_folder(self, reference: str, param: str = "from_state") -> Path:
        found = STATE.fullmatch(reference)
        folder = self.root / "-"  # names nothing
        if found is not None:
            session, index, kind, name = found.groups()
            folder = self.root / session / index / kind / name
        if not (folder / "state.json").is_file():
            raise NotFoundError(f"no saved state {reference!r}", param=param)
        return folder

    async def _base_folder(self, base_model: str) -> Path:
        try:
            model = await self.models.get_model(base_model)
        except NotFoundError:
            missing = f"base_model: no model {base_model!r}"
            raise NotFoundError(missing, param="base_model") from None
        if model.kind != "base" or model.weights is None:
            raise InvalidRequestError(
                f"base_model: {base_model!r} is not a base model whose weights this server "
                "can read",
                param="base_model",
            )
        return Path(model.weights.path)

    def _device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    async def _start_worker(self, model_id: str, folder: Path) -> Worker:
        log_path = folder / "worker.log"
        env = dict(os.environ)
        if self.config.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.config.torch_threads)
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER,
                str(folder / "heartbeat.json"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=die_with_parent,
                env=env,
                limit=1 << 30,  # one answer is one line, however many datums it holds
            )
        return Worker(model_id, proc, log_path, folder / "heartbeat.json")


def _checked(index: int, datum: dict[str, Any], loss: str) -> dict[str, Any]:
    """A datum whose per-token inputs are as long as its tokens, with those its loss needs."""
    length = len(datum["input_tokens"])
    for name in ("target_tokens", *LOSS_INPUTS[loss]):
        values = datum.get(name)
        if values is None:
            raise InvalidRequestError(
                f"data[{index}].{name}: the {loss} loss needs it", param=f"data[{index}].{name}"
            )
        if len(values) != length:
            raise InvalidRequestError(
                f"data[{index}].{name}: {len(values)} values for {length} input tokens",
                param=f"data[{index}].{name}",
            )
    return datum


def _state(path: Path) -> SavedState:
    """A saved state, from its `state.json` (which also holds its adapter settings)."""
    return SavedState.model_validate_json(path.read_text())


def _by_age(paths: Iterable[Path]) -> list[Path]:
    """Oldest first: by when each was written, to the nanosecond (a state's `created_at` is in
    seconds)."""
    return sorted(paths, key=lambda p: p.stat().st_mtime_ns)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"
