"""`LocalSessions` (inline::peft's interactive training) over a small in-memory Models: what a
caller gets wrong is a 400 naming the field, a worker that dies (or wedges, and is killed by the
watchdog) is reported on the next call, and saved states outlive the provider (a restart)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from llama_post.apis.models import HuggingFaceSource, Model, ModelWeights
from llama_post.apis.training_sessions import (
    AdamParams,
    CreateSessionRequest,
    CreateTrainingModelRequest,
    Datum,
    FinishSessionRequest,
    ForwardBackwardRequest,
    LoadStateRequest,
    LoraSettings,
    OptimStepRequest,
    SaveStateRequest,
)
from llama_post.errors import ConflictError, InvalidRequestError, LlamaPostError, NotFoundError
from providers.jobs.config import LocalSessionsConfig
from providers.jobs.sessions import LocalSessions
from tests.support import TINY

TOKENS = [5, 9, 14, 3, 27, 8]
DATA = [Datum(input_tokens=TOKENS[:-1], target_tokens=TOKENS[1:], weights=[1.0] * 5)]


class OneModel:
    """The Models API as far as sessions use it: the tiny base, where its weights are."""

    def __init__(self, folder: Path) -> None:
        self.model = Model(
            id=TINY,
            created=0,
            provider_id="memory",
            kind="base",
            context_length=256,
            has_chat_template=False,
            weights=ModelWeights(path=str(folder)),
            source=HuggingFaceSource(type="huggingface", path=str(folder)),
        )

    async def get_model(self, model_id: str) -> Model:
        if model_id != TINY:
            raise NotFoundError(f"no model {model_id!r}")
        return self.model


def sessions(folder: Path, tiny_model: Path, **settings: float) -> LocalSessions:
    config = LocalSessionsConfig(storage_dir=folder, device="cpu", torch_threads=1, **settings)
    return LocalSessions(config, OneModel(tiny_model))  # type: ignore[arg-type]


def test_mistakes_deaths_and_restarts(tmp_path: Path, tiny_model: Path) -> None:
    asyncio.run(_story(tmp_path, tiny_model))


async def _story(tmp_path: Path, tiny_model: Path) -> None:
    first = sessions(tmp_path, tiny_model)
    try:
        session = (await first.create_session(CreateSessionRequest())).session_id
        with pytest.raises(NotFoundError, match="base_model: no model 'nope'"):
            await first.create_training_model(
                session, CreateTrainingModelRequest(base_model="nope")
            )
        lora = LoraSettings(rank=2, train_mlp=False, train_unembed=False)
        made = await first.create_training_model(
            session, CreateTrainingModelRequest(base_model=TINY, lora=lora)
        )
        model = made.training_model_id
        assert model == f"{session}:train:0" and made.tokenizer == str(tiny_model)
        with pytest.raises(ConflictError):
            await first.create_training_model(
                session, CreateTrainingModelRequest(base_model=TINY, index=0)
            )

        short = Datum(input_tokens=[1, 2, 3], target_tokens=[2, 3, 4], weights=[1.0])
        with pytest.raises(InvalidRequestError, match=r"data\[0\]\.weights: 1 values for 3"):
            await first.forward_backward(model, ForwardBackwardRequest(data=[short]))
        rl = ForwardBackwardRequest(data=DATA, loss="ppo")
        with pytest.raises(InvalidRequestError, match=r"data\[0\]\.logprobs: the ppo loss"):
            await first.forward_backward(model, rl)
        huge = Datum(input_tokens=[10**7], target_tokens=[1], weights=[1.0])
        with pytest.raises(InvalidRequestError, match=r"input_tokens: token 10000000 is not"):
            await first.forward_backward(model, ForwardBackwardRequest(data=[huge]))

        before = await first.forward_backward(model, ForwardBackwardRequest(data=DATA))
        await first.optim_step(model, OptimStepRequest(adam=AdamParams(learning_rate=1e-2)))
        saved = await first.save_state(model, SaveStateRequest(name="one"))
        assert (Path(saved.path) / "adapter_model.safetensors").is_file()
        assert (Path(saved.path) / "optimizer.pt").is_file()
        with pytest.raises(ConflictError, match="overwrite"):
            await first.save_state(model, SaveStateRequest(name="one"))

        # the worker dies: the next call says so, with its exit code and log
        worker = first.live[model].worker
        assert worker is not None
        os.kill(worker.proc.pid, signal.SIGKILL)
        with pytest.raises(LlamaPostError, match=r"has died \(exit code -9\)"):
            await first.forward_backward(model, ForwardBackwardRequest(data=DATA))
        assert (await first.get_training_model(model)).status == "failed"

        await first.finish_session(session, FinishSessionRequest())
        with pytest.raises(ConflictError, match="is finished"):
            await first.heartbeat_session(session)
    finally:
        await first.shutdown()

    # a restarted provider: the session is finished, its state starts a model elsewhere
    second = sessions(tmp_path, tiny_model, stall_seconds=3, watch_interval_seconds=0.2)
    try:
        assert (await second.get_session(session)).status == "finished"
        with pytest.raises(ConflictError, match="finished"):
            await second.forward_backward(model, ForwardBackwardRequest(data=DATA))
        again = (await second.create_session(CreateSessionRequest())).session_id
        resumed = await second.create_training_model(
            again,
            CreateTrainingModelRequest(
                base_model=TINY, from_state=saved.reference, with_optimizer=True
            ),
        )
        assert resumed.steps == 1 and resumed.lora == lora
        after = await second.forward_backward(
            resumed.training_model_id, ForwardBackwardRequest(data=DATA, forward_only=True)
        )
        assert after.loss < before.loss
        # and loaded into a live model again (Tinker's load_state), its optimizer's step with it
        await second.optim_step(resumed.training_model_id, OptimStepRequest())
        assert (await second.get_training_model(resumed.training_model_id)).steps == 2
        loaded = await second.load_state(
            resumed.training_model_id,
            LoadStateRequest(from_state=saved.reference, with_optimizer=True),
        )
        assert loaded.steps == 1
        again_after = await second.forward_backward(
            resumed.training_model_id, ForwardBackwardRequest(data=DATA, forward_only=True)
        )
        assert again_after.loss == after.loss

        # the worker wedges (stopped): the watchdog kills it, and this call and the next say why
        second.start()
        worker = second.live[resumed.training_model_id].worker
        assert worker is not None
        os.kill(worker.proc.pid, signal.SIGSTOP)
        for _ in range(2):
            with pytest.raises(
                LlamaPostError, match=r"was killed: it stalled in \w+: no heartbeat for"
            ):
                await second.forward_backward(
                    resumed.training_model_id, ForwardBackwardRequest(data=DATA)
                )
        assert worker.proc.returncode == -signal.SIGKILL
    finally:
        await second.shutdown()
