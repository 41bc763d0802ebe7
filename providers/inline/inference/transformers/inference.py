"""Inference with transformers on CPU or CUDA: one continuous-batching engine per base model,
LoRA adapters served over their base without loading it again."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_post.apis.inference import (
    BatchChatCompletionRequest,
    BatchChatCompletionResponse,
    BatchCompletionRequest,
    BatchCompletionResponse,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionRequest,
    PromptLogprob,
    SamplingFields,
    Usage,
)
from llama_post.apis.inference.models import AssistantMessage
from llama_post.apis.inspect import ProviderHealth
from llama_post.apis.models import (
    GGUFSource,
    Model,
    ModelInfo,
    ModelSource,
    ModelWeights,
    RegisterModelRequest,
)
from llama_post.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError
from providers.inline.inference.transformers.config import TransformersInferenceConfig
from providers.inline.inference.transformers.engine import Engine, Event, TokenInfo
from providers.inline.inference.transformers.guided import Grammars, Guide, constraint_of
from providers.inline.inference.transformers.loading import load_base, source_path
from providers.inline.inference.transformers.responses import (
    Echo,
    chat_logprobs,
    collect,
    completion,
    completion_choice,
    merge,
    prompt_logprobs,
    usage_of,
)
from providers.inline.inference.transformers.sampling import SamplingParams
from providers.utils.gguf import converted_gguf
from providers.utils.huggingface import recommended_sampling
from providers.utils.precision import UnsupportedPrecision, choose

log = logging.getLogger(__name__)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Base:
    engine: Engine
    tokenizer: Any
    info: ModelInfo
    eos_ids: frozenset[int]
    folder: Path
    grammars: Grammars
    adapters: dict[str, str] = field(default_factory=dict)  # model id -> PEFT adapter name


@dataclass
class Target:
    model_id: str
    base: Base
    adapter: str | None


class TransformersInference:
    def __init__(self, config: TransformersInferenceConfig, provider_id: str) -> None:
        self.config = config
        self.provider_id = provider_id
        cuda = torch.cuda.is_available()
        self.device = (
            "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
        )
        if config.dtype == "float16":
            self.dtype, why = torch.float16, "asked for"
        else:
            try:
                choice = choose(config.dtype, self.device)
            except UnsupportedPrecision as exc:
                raise ConfigError(f"{provider_id}: config.dtype {exc}") from None
            self.dtype, why = choice.torch_dtype, choice.why
        log.info("%s computes in %s (%s)", provider_id, DTYPE_NAMES[self.dtype], why)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.bases: dict[str, Base] = {}
        self.targets: dict[str, Target] = {}
        self._adapter_names = 0

    # -- models --------------------------------------------------------------------------------

    async def check_source(self, source: ModelSource) -> Path:
        return await asyncio.to_thread(source_path, source, self.config.model_dirs)

    async def discover(self) -> list[RegisterModelRequest]:
        return []  # it serves what it is given

    async def health(self) -> ProviderHealth:
        return ProviderHealth()

    async def load_model(self, model: Model, base: Model | None) -> ModelInfo:
        if base is not None:
            return await self._load_adapter(model, base)
        path = await asyncio.to_thread(source_path, model.source, self.config.model_dirs)
        if isinstance(model.source, GGUFSource):
            path = await asyncio.to_thread(converted_gguf, path, self.config.cache_dir)
        hf_model, tokenizer = await asyncio.to_thread(load_base, path, self.device, self.dtype)
        context = int(getattr(hf_model.config, "max_position_embeddings", 2048))
        if self.config.max_context_length:
            context = min(context, self.config.max_context_length)
        info = ModelInfo(
            context_length=context,
            dtype=DTYPE_NAMES[self.dtype],
            parameter_count=sum(p.numel() for p in hf_model.parameters()),
            has_chat_template=bool(tokenizer.chat_template),
            generation_config=recommended_sampling(path),
            weights=ModelWeights(path=str(path)),
        )
        eos = {tokenizer.eos_token_id, *_as_list(hf_model.generation_config.eos_token_id)}
        engine = Engine(hf_model, tokenizer, self.device, self.config.max_batch_size, model.id)
        eos_ids = frozenset(e for e in eos if e is not None)
        grammars = Grammars(tokenizer, engine.vocab, eos_ids)
        loaded = Base(engine, tokenizer, info, eos_ids, path, grammars)
        self.bases[model.id] = loaded
        self.targets[model.id] = Target(model.id, loaded, None)
        return info

    async def _load_adapter(self, model: Model, base_model: Model) -> ModelInfo:
        base = self.bases.get(base_model.id)
        if base is None:
            raise InvalidRequestError(
                f"source.base_model: {base_model.id!r} is not loaded", param="source.base_model"
            )
        path = await asyncio.to_thread(source_path, model.source, self.config.model_dirs)
        self._adapter_names += 1
        name = f"adapter{self._adapter_names}"
        engine = base.engine

        def attach() -> int:
            from peft import PeftModel

            before = int(sum(p.numel() for p in engine.model.parameters()))
            # served in the base's type (peft would otherwise upcast a bf16 base's adapter)
            if isinstance(engine.model, PeftModel):
                engine.model.load_adapter(
                    str(path), adapter_name=name, autocast_adapter_dtype=False
                )
            else:
                engine.model = PeftModel.from_pretrained(
                    engine.model, str(path), adapter_name=name, autocast_adapter_dtype=False
                )
            engine.model.eval()
            engine.adapters.add(name)
            return int(sum(p.numel() for p in engine.model.parameters())) - before

        try:
            added = await engine.call(attach)
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            raise InvalidRequestError(
                f"source.path: the adapter does not fit {base_model.id}: {exc}", param="source.path"
            ) from None
        base.adapters[model.id] = name
        self.targets[model.id] = Target(model.id, base, name)
        count = base.info.parameter_count
        return base.info.model_copy(
            update={
                "parameter_count": None if count is None else count + added,
                "weights": ModelWeights(path=str(base.folder), adapter_path=str(path)),
            }
        )

    async def unload_model(self, model_id: str) -> None:
        target = self.targets.get(model_id)
        if target is None:
            return
        if target.adapter is None:
            del self.targets[model_id]
            self.bases.pop(model_id)
            await asyncio.to_thread(target.base.engine.stop)
            return
        engine, name = target.base.engine, target.adapter
        # a request whose answer was just sent may hold its slot a moment longer
        deadline = time.monotonic() + 5.0
        while engine.busy_with(name) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the engine's own thread frees the slot; nothing to await
        if engine.busy_with(name):
            raise ConflictError(f"model {model_id!r} is answering requests; try again shortly")
        del self.targets[model_id]
        del target.base.adapters[model_id]

        def detach() -> None:
            if engine.adapters == {name}:  # the last one: give back the plain base model
                engine.model = engine.model.unload()
            else:
                engine.model.delete_adapter(name)
            engine.adapters.discard(name)

        await engine.call(detach)

    async def shutdown(self) -> None:
        for base in self.bases.values():
            await asyncio.to_thread(base.engine.stop)

    # -- chat ----------------------------------------------------------------------------------

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        target = self._target(request.model)
        prompt = self._chat_prompt(target, request.messages)
        top = request.top_logprobs or 0
        params = self._params(
            request,
            target,
            len(prompt),
            request.max_completion_tokens or request.max_tokens,
            top if request.logprobs else None,
        )
        guides = await self._guides(request, target)
        events = target.base.engine.generate(
            prompt, params, target.adapter, target.model_id, guides()
        )
        if request.stream:
            return self._chat_chunks(request, events)
        return await self._chat_result(request, events)

    async def batch_chat_completion(
        self, request: BatchChatCompletionRequest
    ) -> BatchChatCompletionResponse:
        target = self._target(request.model)
        top = request.top_logprobs if request.logprobs else None
        guides = await self._guides(request, target)
        jobs = []
        for i, messages in enumerate(request.messages_batch):
            prompt = self._chat_prompt(target, messages, f"messages_batch[{i}]")
            params = self._params(
                request,
                target,
                len(prompt),
                request.max_completion_tokens or request.max_tokens,
                (top or 0) if top is not None else None,
            )
            jobs.append(
                self._chat_result(
                    request,
                    target.base.engine.generate(
                        prompt, params, target.adapter, target.model_id, guides()
                    ),
                )
            )
        return BatchChatCompletionResponse(data=list(await asyncio.gather(*jobs)))

    async def _chat_result(
        self, request: SamplingFields, events: AsyncIterator[Event]
    ) -> ChatCompletion:
        got = await collect(events)
        text, tokens, last = got.text, got.tokens, got.last
        logprobs = chat_logprobs(tokens) if tokens and tokens[0].logprob is not None else None
        return ChatCompletion(
            id=f"chatcmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            model=request.model,
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=text),
                    finish_reason=last.finish_reason,
                    logprobs=logprobs,
                )
            ],
            usage=usage_of(last),
        )

    async def _chat_chunks(
        self, request: ChatCompletionRequest, events: AsyncIterator[Event]
    ) -> AsyncIterator[ChatCompletionChunk]:
        chunk_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

        def chunk(
            choice: ChatChunkChoice | None, usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=request.model,
                choices=[choice] if choice else [],
                usage=usage,
            )

        yield chunk(ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content="")))
        pending: list[TokenInfo] = []
        last: Event | None = None
        async for event in events:
            last = event
            pending += event.tokens
            if not event.text and event.finish_reason is None:
                continue
            logprobs = chat_logprobs(pending) if request.logprobs else None
            pending = []
            yield chunk(
                ChatChunkChoice(
                    index=0,
                    delta=ChatDelta(content=event.text or None),
                    finish_reason=event.finish_reason,
                    logprobs=logprobs,
                )
            )
        if last is not None and request.stream_options and request.stream_options.include_usage:
            yield chunk(None, usage_of(last))

    # -- completions ---------------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        target = self._target(request.model)
        if request.stream and request.prompt_logprobs is not None:
            raise InvalidRequestError(
                "prompt_logprobs: not with stream; ask without streaming", param="prompt_logprobs"
            )
        if request.max_tokens == 0 and not request.echo:
            raise InvalidRequestError(
                "max_tokens: 0 generates nothing; it scores the prompt, with `echo: true` (and "
                "`logprobs` for its tokens' logprobs)",
                param="max_tokens",
            )
        guides = await self._guides(request, target)
        scoring = request.logprobs if request.echo else None
        streams, prompts = [], self._prompts(target, request.prompt)
        echoes: list[str] | None = [] if request.echo else None  # what each choice starts with
        for ids, text in prompts:
            params = self._params(
                request, target, len(ids), request.max_tokens, request.logprobs, scoring
            )
            if request.stop_token_ids:
                stops = params.eos_ids | frozenset(request.stop_token_ids)
                params = dataclasses.replace(params, eos_ids=stops)
            streams.append(
                target.base.engine.generate(ids, params, target.adapter, target.model_id, guides())
            )
            if echoes is not None:
                echoes.append(target.base.tokenizer.decode(ids) if text is None else text)
        if request.stream:
            return self._completion_chunks(request, streams, echoes)
        results = list(await asyncio.gather(*(collect(s) for s in streams)))
        made = completion(request, results, echoes)
        if request.prompt_logprobs is not None:  # vLLM's: each position's token and top k
            for choice, (ids, _) in zip(made.choices, prompts, strict=True):
                choice.prompt_logprobs = await self._prompt_logprobs(
                    target, ids, request.prompt_logprobs
                )
        return made

    async def _prompt_logprobs(
        self, target: Target, ids: list[int], k: int
    ) -> list[dict[str, PromptLogprob] | None]:
        engine = target.base.engine
        found = await engine.call(lambda: engine.prompt_logprobs(ids, target.adapter, k))
        return prompt_logprobs(found, target.base.tokenizer.decode)

    async def batch_completion(self, request: BatchCompletionRequest) -> BatchCompletionResponse:
        target = self._target(request.model)
        guides = await self._guides(request, target)
        jobs = []
        for i, text in enumerate(request.prompts):
            ids = self._encode(target, text, f"prompts[{i}]")
            params = self._params(request, target, len(ids), request.max_tokens, request.logprobs)
            engine = target.base.engine
            jobs.append(
                collect(engine.generate(ids, params, target.adapter, target.model_id, guides()))
            )
        results = await asyncio.gather(*jobs)
        return BatchCompletionResponse(data=[completion(request, [r]) for r in results])

    async def _completion_chunks(
        self,
        request: CompletionRequest,
        streams: list[AsyncIterator[Event]],
        echoes: list[str] | None,
    ) -> AsyncIterator[Completion]:
        chunk_id, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        echoed: set[int] = set()
        async for index, event in merge(streams):
            echo = None
            if echoes is not None and index not in echoed:  # its first chunk starts with it
                echoed.add(index)
                echo = Echo(echoes[index], event.prompt or [])
            elif not event.text and event.finish_reason is None:
                continue
            choice = completion_choice(
                index,
                event.text,
                event.tokens,
                event.finish_reason,
                echo,
                request.logprobs is not None,
                as_ids=request.return_tokens_as_token_ids,
            )
            yield Completion(id=chunk_id, created=created, model=request.model, choices=[choice])

    # -- helpers -------------------------------------------------------------------------------

    def _target(self, model_id: str) -> Target:
        target = self.targets.get(model_id)
        if target is None:
            raise NotFoundError(f"model {model_id!r} is not loaded", param="model")
        return target

    async def _guides(self, request: SamplingFields, target: Target) -> Callable[[], Guide | None]:
        """The request's constraint compiled (in a thread: a new schema takes milliseconds, the
        model's first one about a second more), as a maker of one matcher per sequence."""
        constraint = constraint_of(request)
        if constraint is None:
            return lambda: None
        grammars = target.base.grammars
        compiled = await asyncio.to_thread(grammars.compile, constraint)
        return lambda: grammars.guide(compiled)

    def _chat_prompt(
        self, target: Target, messages: list[ChatMessage], field: str = "messages"
    ) -> list[int]:
        if not messages:
            raise InvalidRequestError(f"{field}: give at least one message", param=field)
        if not target.base.info.has_chat_template:
            raise InvalidRequestError(
                f"model: {target.model_id!r} has no chat template; use /v1/completions",
                param="model",
            )
        turns = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in messages
        ]
        text = target.base.tokenizer.apply_chat_template(
            turns, add_generation_prompt=turns[-1]["role"] != "assistant", tokenize=False
        )
        return self._encode(target, text, field)

    def _prompts(
        self, target: Target, prompt: str | list[str] | list[int] | list[list[int]]
    ) -> list[tuple[list[int], str | None]]:
        """A completion's prompts as token ids, each with its text where it was given as one:
        one text, several, one given as ids, or several (lm-eval sends its batches so)."""
        one = isinstance(prompt, str) or isinstance(prompt[0], int)
        items: list[Any] = [prompt] if one else list(prompt)
        vocab = target.base.engine.vocab
        prompts: list[tuple[list[int], str | None]] = []
        for i, item in enumerate(items):
            field = f"prompt[{i}]" if len(items) > 1 else "prompt"
            if isinstance(item, str):
                prompts.append((self._encode(target, item, field), item))
            elif any(p >= vocab for p in item):
                raise InvalidRequestError(
                    f"{field}: a token id is not in the model's vocabulary of {vocab}", param=field
                )
            else:
                prompts.append((list(item), None))
        return prompts

    def _encode(self, target: Target, text: str, field: str) -> list[int]:
        ids: list[int] = target.base.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InvalidRequestError(f"{field}: the prompt is empty", param=field)
        return ids

    def _params(
        self,
        request: SamplingFields,
        target: Target,
        prompt_tokens: int,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        context = target.base.info.context_length
        if prompt_tokens > context or (prompt_tokens == context and max_tokens != 0):
            left = "" if max_tokens == 0 else ", and at least one must be left to generate"
            raise InvalidRequestError(
                f"the prompt is {prompt_tokens} tokens; {target.model_id}'s context is {context} "
                f"tokens{left}",
                param="messages" if isinstance(request, ChatCompletionRequest) else "prompt",
            )
        if max_tokens is not None and prompt_tokens + max_tokens > context:
            named = getattr(request, "max_completion_tokens", None)  # chat's newer name wins
            field = "max_tokens" if named is None else "max_completion_tokens"
            raise InvalidRequestError(
                f"{field}: {prompt_tokens} prompt tokens + {max_tokens} to generate is over "
                f"{target.model_id}'s context of {context} tokens",
                param=field,
            )
        return SamplingParams(
            max_tokens=context - prompt_tokens if max_tokens is None else max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=request.repetition_penalty or 1.0,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            stop=tuple(request.stop_sequences()),
            eos_ids=frozenset() if request.ignore_eos else target.base.eos_ids,
        )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
