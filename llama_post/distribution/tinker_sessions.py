"""Tinker's training and sampling calls (`/api/v1`), over whatever serves TrainingSessions.

Each call is answered at once with a future (`request_id`, `<session>:req:<n>`, so a future is
owned as its session); its work runs as a task whose answer `retrieve_future` long-polls. A
model's calls carry the SDK's `seq_id`: they run one after another in its order (a call waits
up to `TURN_WAIT` for the ones before it), and a call sent again with a `seq_id` already seen
is answered with the first one's future, not run twice. Forward/backward and sample results
are protobuf, as the SDK reads them; the rest JSON. A saved state's Tinker path is
`tinker://<training model>/weights/<name>` (`sampler_weights` for sampler weights)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llama_post.apis.inference import Completion, CompletionRequest, Inference, PromptLogprob
from llama_post.apis.models import AdapterSource, Models, RegisterModelRequest
from llama_post.apis.training_sessions import (
    AdamParams,
    CreateSessionRequest,
    CreateTrainingModelRequest,
    Datum,
    FinishSessionRequest,
    ForwardBackwardRequest,
    InteractiveTraining,
    LoadStateRequest,
    LoraSettings,
    OptimStepRequest,
    SaveStateRequest,
)
from llama_post.apis.training_sessions.tinker import (
    TinkerCreateModel,
    TinkerCreateSamplingSession,
    TinkerCreateSession,
    TinkerDatum,
    TinkerFinished,
    TinkerFinishSession,
    TinkerForwardBackward,
    TinkerFuture,
    TinkerHeartbeat,
    TinkerInfo,
    TinkerLoadWeights,
    TinkerLoraConfig,
    TinkerModelData,
    TinkerModelRef,
    TinkerOptimStep,
    TinkerRetrieveFuture,
    TinkerSample,
    TinkerSampler,
    TinkerSamplingSession,
    TinkerSaveForSampler,
    TinkerSaveWeights,
    TinkerSessionCreated,
    TinkerSessionRef,
)
from llama_post.apis.training_sessions.tinker_wire import (
    PROTOBUF,
    Topk,
    encode_forward_backward_output,
    encode_sample_response,
)
from llama_post.errors import InvalidRequestError, LlamaPostError, NotFoundError
from llama_post.schema import FileContent

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
LOSSES = ("cross_entropy", "importance_sampling", "ppo")
KINDS = {"weights": "state", "sampler_weights": "sampler"}
POLL_SECONDS = 30.0  # under the SDK's 45 s per poll
KEEP_SECONDS = 600.0  # how long a result is kept once it has been read
TURN_WAIT = 60.0  # how long a call waits for an earlier seq_id that has not come
CREATION = -1  # the key of a model's creation among its seq_ids
Answer = tuple[bytes, str]  # a future's body and its media type


@dataclass
class _Turns:
    """A model's next seq_id to run, and who waits for it."""

    next: int = 1  # the SDK's first call on a model is seq_id 1 (its creation has none)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class TinkerSessions:
    """`raw`'s native methods as they are, and Tinker's beside them."""

    def __init__(
        self, raw: InteractiveTraining, models: Models, inference: Callable[[], Inference | None]
    ) -> None:
        self.raw = raw
        self.models = models  # guarded: sampler weights are registered as the caller's models
        self.inference = inference  # guarded, once the stack has built it
        self.samplers: dict[str, TinkerSampler] = {}
        self.served: dict[str, str] = {}  # a sampler's model id, as inference serves it
        self.futures: dict[str, asyncio.Task[Answer]] = {}
        self.seen: dict[tuple[str, int], str] = {}
        self.turns: dict[str, _Turns] = {}
        self.count = itertools.count()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    # -- sessions ------------------------------------------------------------------------------

    async def tinker_create_session(self, request: TinkerCreateSession) -> TinkerSessionCreated:
        metadata = {k: str(v) for k, v in (request.user_metadata or {}).items()}
        if request.display_name:
            metadata["display_name"] = request.display_name
        made = await self.raw.create_session(
            _native(CreateSessionRequest, "user_metadata", metadata=metadata)
        )
        return TinkerSessionCreated(session_id=made.session_id)

    async def tinker_session_heartbeat(self, request: TinkerSessionRef) -> TinkerHeartbeat:
        await self.raw.heartbeat_session(_session(request.session_id))
        return TinkerHeartbeat()

    async def tinker_finish_session(
        self, session_id: str, request: TinkerFinishSession
    ) -> TinkerFinished:
        reason = (request.reason or {}).get("type", "success")
        if reason not in ("success", "errored", "interrupted"):
            reason = "errored"
        await self.raw.finish_session(session_id, FinishSessionRequest(reason=reason))
        return TinkerFinished(session_id=session_id)

    # -- training models -----------------------------------------------------------------------

    async def tinker_create_model(self, request: TinkerCreateModel) -> TinkerFuture:
        session = _session(request.session_id)
        lora = request.lora_config or TinkerLoraConfig()
        native = _native(
            CreateTrainingModelRequest,
            "lora_config",
            base_model=request.base_model,
            lora=_native(LoraSettings, "lora_config", **lora.model_dump()),
            index=request.model_seq_id,
            metadata={k: str(v) for k, v in (request.user_metadata or {}).items()},
        )
        model_id = f"{session}:train:{request.model_seq_id}"

        async def create() -> Answer:
            await self.raw.create_training_model(session, native)
            return _json({"model_id": model_id, "type": "create_model"})

        return self._submit(session, model_id, None, create, once=CREATION)

    async def tinker_get_info(self, request: TinkerModelRef) -> TinkerInfo:
        model = await self.raw.get_training_model(_model(request.model_id))
        return TinkerInfo(
            model_id=model.training_model_id,
            model_data=TinkerModelData(model_name=model.base_model, tokenizer_id=model.tokenizer),
            lora_rank=model.lora.rank,
        )

    # A call of a model's that takes its turn (a seq_id) is refused through its future, never at
    # once: the SDK has spent the seq_id, and the model's next calls wait for it.

    async def tinker_forward_backward(self, request: TinkerForwardBackward) -> TinkerFuture:
        model_id = _model(request.model_id)

        async def run() -> Answer:
            done = await self.raw.forward_backward(model_id, _forward_backward(request))
            outputs = [o.model_dump() for o in done.outputs]
            return encode_forward_backward_output(outputs, done.metrics), PROTOBUF

        return self._submit(_owner(model_id), model_id, request.seq_id, run)

    async def tinker_optim_step(self, request: TinkerOptimStep) -> TinkerFuture:
        model_id = _model(request.model_id)

        async def run() -> Answer:
            if request.optimizer_params is not None:
                raise InvalidRequestError(
                    "optimizer_params: AdamW is the one optimizer served here; send adam_params",
                    param="optimizer_params",
                )
            given = request.adam_params.model_dump() if request.adam_params else {}
            native = OptimStepRequest(adam=_native(AdamParams, "adam_params", **given))
            done = await self.raw.optim_step(model_id, native)
            return _json({"metrics": done.metrics, "type": "optim_step"})

        return self._submit(_owner(model_id), model_id, request.seq_id, run)

    async def tinker_save_weights(self, request: TinkerSaveWeights) -> TinkerFuture:
        return self._save(request, "weights")

    async def tinker_save_weights_for_sampler(self, request: TinkerSaveForSampler) -> TinkerFuture:
        """With no `path` (`save_weights_and_get_sampling_client`): saved under a name of its
        own, and answered with a sampling session over it."""
        sampling = None
        if request.path is None:
            seq = request.sampling_session_seq_id or 0
            sampling = f"{_owner(_model(request.model_id))}:sample:{seq}"
        return self._save(request, "sampler_weights", sampling)

    def _save(
        self, request: TinkerSaveWeights, kind: str, sampling: str | None = None
    ) -> TinkerFuture:
        model_id = _model(request.model_id)
        name = request.path or f"seq-{request.seq_id or 0:06d}"
        answer = "save_weights" if kind == "weights" else "save_weights_for_sampler"

        async def run() -> Answer:
            native = _native(
                SaveStateRequest, "path", name=name, kind=KINDS[kind], overwrite=request.overwrite
            )
            await self.raw.save_state(model_id, native)
            path = f"tinker://{model_id}/{kind}/{name}"
            if sampling is not None:
                await self._sampler(sampling, path, None)
                return _json({"sampling_session_id": sampling, "type": answer})
            return _json({"path": path, "type": answer})

        return self._submit(_owner(model_id), model_id, request.seq_id, run)

    async def tinker_load_weights(self, request: TinkerLoadWeights) -> TinkerFuture:
        if request.model_id is not None:  # into a training model (`load_state`), in its turn
            return self._load_into(request, _model(request.model_id))
        if request.session_id is None or request.model_seq_id is None:
            raise NotFoundError(  # names no model to load into or to create
                "session_id: name the session and model_seq_id of the training model to create "
                "from the state, or the model_id to load it into",
                param="session_id",
            )
        session = _session(request.session_id)
        model_id, kind, name = _reference(request.path).split("/")
        saved = await self.raw.get_state(model_id, kind, name)
        native = _native(
            CreateTrainingModelRequest,
            "path",
            base_model=request.base_model or saved.base_model,
            from_state=_reference(request.path),
            with_optimizer=request.optimizer,
            index=request.model_seq_id,
        )
        model_id = f"{session}:train:{request.model_seq_id}"

        async def load() -> Answer:
            await self.raw.create_training_model(session, native)
            answer = {"path": request.path, "model_id": model_id, "type": "load_weights"}
            return _json(answer)

        return self._submit(session, model_id, None, load, once=CREATION)

    def _load_into(self, request: TinkerLoadWeights, model_id: str) -> TinkerFuture:
        async def load() -> Answer:
            native = _native(
                LoadStateRequest,
                "path",
                from_state=_reference(request.path),
                with_optimizer=request.optimizer,
            )
            await self.raw.load_state(model_id, native)
            return _json({"path": request.path, "model_id": model_id, "type": "load_weights"})

        return self._submit(_owner(model_id), model_id, request.seq_id, load)

    # -- sampling ------------------------------------------------------------------------------

    async def tinker_create_sampling_session(
        self, request: TinkerCreateSamplingSession
    ) -> TinkerSamplingSession:
        session = (await self.raw.get_session(_session(request.session_id))).session_id
        sampler_id = f"{session}:sample:{request.sampling_session_seq_id}"
        if sampler_id not in self.samplers:
            await self._sampler(sampler_id, request.model_path, request.base_model)
        return TinkerSamplingSession(sampling_session_id=sampler_id)

    async def tinker_get_sampler(self, sampler_id: str) -> TinkerSampler:
        found = self.samplers.get(sampler_id)
        if found is None:
            raise NotFoundError(f"no sampler {sampler_id!r}", param="sampler_id")
        return found

    async def _sampler(self, sampler_id: str, path: str | None, base_model: str | None) -> None:
        """A sampler over a base model, or over sampler weights, registered (once) as an
        adapter model of the caller's, which inference serves over its base without reloading
        it."""
        if path is None:
            if base_model is None:  # names no model to sample
                raise NotFoundError("model_path: give it, or base_model", param="model_path")
            model = await self.models.get_model(base_model)
            self.samplers[sampler_id] = TinkerSampler(sampler_id=sampler_id, base_model=model.id)
            self.served[sampler_id] = model.id
            return
        model_id, kind, name = _reference(path).split("/")
        saved = await self.raw.get_state(model_id, kind, name)
        served = f"{model_id}/{kind}/{name}"
        try:
            await self.models.get_model(served)
        except NotFoundError:
            source = AdapterSource(type="adapter", path=saved.path, base_model=saved.base_model)
            await self.models.register_model(RegisterModelRequest(model_id=served, source=source))
        self.samplers[sampler_id] = TinkerSampler(
            sampler_id=sampler_id, base_model=saved.base_model, model_path=path
        )
        self.served[sampler_id] = served

    async def tinker_sample(self, request: TinkerSample) -> TinkerFuture:
        """`num_samples` completions of the prompt; the first also gives the prompt's
        log-probabilities when asked (`compute_logprobs`), and each its top-k when asked."""
        sampler_id = request.sampling_session_id
        if sampler_id not in self.served:
            raise NotFoundError(f"no sampler {sampler_id!r}", param="sampling_session_id")
        for name in ("target_prompt_logprobs", "prompt_alt_tokens_k"):
            if getattr(request, name):
                raise InvalidRequestError(f"{name}: not served here; leave it out", param=name)
        inference = self.inference()
        if inference is None:
            raise InvalidRequestError("this server serves no inference to sample with")
        prompt = [t for chunk in request.prompt.chunks for t in chunk.tokens]
        topk, wants_prompt = request.topk_sample_logprobs, bool(request.prompt_logprobs)
        wants_prompt = wants_prompt or request.topk_prompt_logprobs > 0
        asks = [
            self._ask(request, prompt, i, wants_prompt and i == 0)
            for i in range(request.num_samples)
        ]

        async def run() -> Answer:
            done = await asyncio.gather(*(inference.completion(a) for a in asks))
            choices = [c.choices[0] for c in done if isinstance(c, Completion)]
            sequences = [
                (
                    c.finish_reason or "length",
                    c.token_ids or [],
                    # not echoed: every sampled token has its logprob
                    [p for p in c.logprobs.token_logprobs if p is not None] if c.logprobs else None,
                    _topk_sampled(c.logprobs.top_logprobs) if c.logprobs and topk else None,
                )
                for c in choices
            ]
            if not wants_prompt:
                return encode_sample_response(sequences), PROTOBUF
            lps, top = _prompt(prompt, choices[0].prompt_logprobs or [], request)
            return encode_sample_response(sequences, lps, top), PROTOBUF

        future = self._submit(_owner(sampler_id), sampler_id, None, run)
        ids_of = [f"{future.request_id}:{i}" for i in range(request.num_samples)]
        return future.model_copy(update={"model_id": None, "sample_sequence_ids": ids_of})

    def _ask(
        self, request: TinkerSample, prompt: list[int], i: int, with_prompt: bool
    ) -> CompletionRequest:
        params = request.sampling_params
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        texts = [s for s in stop if isinstance(s, str)]
        ids = [s for s in stop if isinstance(s, int)]
        return _native(
            CompletionRequest,
            "sampling_params",
            model=self.served[request.sampling_session_id],
            prompt=prompt,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else None,
            seed=None if params.seed is None else params.seed + i,  # samples differ
            stop=texts or None,
            stop_token_ids=ids or None,
            ignore_eos=params.stop == [],  # Tinker's: [] disables every stop, EOS too
            logprobs=request.topk_sample_logprobs,
            return_token_ids=True,
            return_tokens_as_token_ids=request.topk_sample_logprobs > 0,
            prompt_logprobs=request.topk_prompt_logprobs if with_prompt else None,
        )

    # -- futures -------------------------------------------------------------------------------

    async def tinker_retrieve_future(self, request: TinkerRetrieveFuture) -> FileContent:
        task = self.futures.get(request.request_id)
        if task is None:
            raise NotFoundError(f"no future {request.request_id!r}", param="request_id")
        done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
        if done:
            body, media_type = task.result()
            # kept a while for a poll the SDK sends again, then dropped (results can be large)
            forget = functools.partial(self.futures.pop, request.request_id, None)
            asyncio.get_running_loop().call_later(KEEP_SECONDS, forget)
        else:
            pending = {"type": "try_again", "request_id": request.request_id}
            body, media_type = _json({**pending, "queue_state": "active"})
        return FileContent(chunks=_once(body), media_type=media_type, size=len(body))

    def _submit(
        self,
        session: str,
        model_id: str,
        seq_id: int | None,
        work: Callable[[], Awaitable[Answer]],
        once: int | None = None,
    ) -> TinkerFuture:
        """A future of `work`, run in `seq_id`'s turn; a call whose `seq_id` (or, for a
        model's creation, `once`) was seen already gets the first one's future."""
        key = seq_id if seq_id is not None else once
        if key is not None and (model_id, key) in self.seen:  # sent again: run once
            return TinkerFuture(request_id=self.seen[model_id, key], model_id=model_id)
        request_id = f"{session}:req:{next(self.count)}"
        if key is not None:
            self.seen[model_id, key] = request_id
        task = asyncio.get_running_loop().create_task(self._in_turn(model_id, seq_id, work))
        self.futures[request_id] = task
        return TinkerFuture(request_id=request_id, model_id=model_id)

    async def _in_turn(
        self, model_id: str, seq_id: int | None, work: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        turns = self.turns.setdefault(model_id, _Turns())
        if seq_id is not None:
            async with turns.changed:
                try:
                    await asyncio.wait_for(
                        turns.changed.wait_for(lambda: turns.next >= seq_id), TURN_WAIT
                    )
                except TimeoutError:
                    log.warning("%s: seq_id %d ran before an earlier one came", model_id, seq_id)
        try:
            return await work()
        except LlamaPostError as exc:
            category = "user" if exc.status < 500 else "server"
            return _json({"error": exc.message, "category": category})
        except Exception:
            log.exception("%s: a Tinker call failed", model_id)
            failed = "internal server error; the server log has the details"
            return _json({"error": failed, "category": "server"})
        finally:
            if seq_id is not None:
                async with turns.changed:
                    turns.next = max(turns.next, seq_id + 1)
                    turns.changed.notify_all()


def _topk_sampled(top: list[dict[str, float] | None]) -> Topk:
    """Each sampled position's alternatives (`token_id:<id>` keys), likeliest first."""
    return [
        sorted(((int(t.removeprefix("token_id:")), lp) for t, lp in at.items()), key=_second)
        for at in top
        if at is not None  # not echoed: every sampled position has its alternatives
    ]


def _prompt(
    prompt: list[int], found: list[dict[str, PromptLogprob] | None], request: TinkerSample
) -> tuple[list[float], Topk | None]:
    """The prompt's log-probabilities (NaN where there are none: its first token, and before
    the last `prompt_logprobs_last_n`), and each position's top-k, as Tinker gives them."""
    first = len(prompt) - (request.prompt_logprobs_last_n or len(prompt))
    logprobs: list[float] = []
    top: Topk = []
    k = request.topk_prompt_logprobs
    for position, (token, at) in enumerate(zip(prompt, found, strict=True)):
        if at is None or position < first:
            logprobs.append(math.nan)
            top.append(None)
            continue
        logprobs.append(at[str(token)].logprob)
        # likeliest first; the prompt's own token, listed beside the top k, falls off if below
        ranked = sorted(((int(i), e.logprob) for i, e in at.items()), key=_second)
        top.append(ranked[:k])
    return logprobs, top if k else None


def _second(pair: tuple[int, float]) -> float:
    return -pair[1]


def _forward_backward(request: TinkerForwardBackward) -> ForwardBackwardRequest:
    given = request.forward_backward_input
    if given.loss_fn not in LOSSES:
        raise InvalidRequestError(
            f"loss_fn: {given.loss_fn!r} is not served here; use one of {', '.join(LOSSES)}",
            param="loss_fn",
        )
    config = given.loss_fn_config or {}
    text = [k for k, v in config.items() if isinstance(v, str)]
    if text:
        raise InvalidRequestError(
            f"loss_fn_config.{text[0]}: {given.loss_fn} takes numbers only",
            param=f"loss_fn_config.{text[0]}",
        )
    return _native(
        ForwardBackwardRequest,
        "forward_backward_input",
        data=[_datum(i, d) for i, d in enumerate(given.data)],
        loss=given.loss_fn,
        loss_config={k: float(v) for k, v in config.items()},
        forward_only=request.forward_only,
    )


def _datum(index: int, datum: TinkerDatum) -> Datum:
    tokens = [t for chunk in datum.model_input.chunks for t in chunk.tokens]
    inputs = datum.loss_fn_inputs
    unknown = sorted(set(inputs) - {"target_tokens", "weights", "logprobs", "advantages"})
    if unknown:
        raise InvalidRequestError(
            f"data[{index}].loss_fn_inputs.{unknown[0]}: not an input of the served losses",
            param=f"data[{index}].loss_fn_inputs.{unknown[0]}",
        )

    def column(name: str) -> list[float] | None:
        return inputs[name].data if name in inputs else None

    targets = column("target_tokens")
    return _native(
        Datum,
        f"data[{index}]",
        input_tokens=tokens,
        target_tokens=[int(t) for t in targets] if targets is not None else [],
        weights=column("weights"),
        logprobs=column("logprobs"),
        advantages=column("advantages"),
    )


def _native(shape: type[M], where: str, **fields: Any) -> M:
    """The native request, or a 400 naming the field of the Tinker request it came from."""
    try:
        return shape(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in (where, *first["loc"]))
        raise InvalidRequestError(f"{path}: {first['msg']}", param=path) from None


def _session(session_id: str) -> str:
    if not session_id.startswith("ts-") or ":" in session_id:
        raise NotFoundError(f"no session {session_id!r}", param="session_id")
    return session_id


def _model(model_id: str) -> str:
    parts = model_id.split(":")
    if len(parts) != 3 or parts[1] != "train" or not parts[2].isdigit():
        raise NotFoundError(f"no training model {model_id!r}", param="model_id")
    return model_id


def _owner(model_id: str) -> str:
    return model_id.split(":", 1)[0]


def _reference(path: str) -> str:
    """A Tinker path's native state reference (`<model>/<state|sampler>/<name>`)."""
    parts = path.removeprefix("tinker://").split("/")
    if not path.startswith("tinker://") or len(parts) != 3 or parts[1] not in KINDS:
        raise NotFoundError(  # names no saved state
            f"path: {path!r} is not tinker://<training model>/weights/<name>", param="path"
        )
    return f"{_model(parts[0])}/{KINDS[parts[1]]}/{parts[2]}"


def _json(body: dict[str, Any]) -> Answer:
    return json.dumps(body).encode(), "application/json"


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
