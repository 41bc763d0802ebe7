"""Continuous batching over one base model: the sequences in flight are decoded together.

One thread owns the model. Each turn it admits waiting sequences (prefilled together, left-padded),
then decodes one token for every active sequence in a single forward pass. The batch's KV cache is
right-aligned: shorter sequences are padded on the left and masked, so a sequence can join or leave
between any two steps. A LoRA adapter is chosen per sequence (PEFT's mixed-adapter batches), so
requests for the base and for several adapters share the same forward pass; a step whose rows all
want the base, or all the same adapter, runs without PEFT's routing (`adapters.Routing`). A
constrained sequence (`Guide`) masks its own row of the step's logits before choosing; the other
rows are untouched, so constrained and free requests share the batch too. A request that scores its
prompt (`prompt_logprobs`: lm-eval's log-likelihoods) is prefilled with its neighbours that score
too, keeping the logits of every position rather than the last, so its prompt's logprobs come from
that one forward pass; with `max_tokens` 0 it leaves the batch there, having generated nothing.
Whatever fails in one row (its sampling, its grammar, its text) ends that sequence alone: it leaves
the batch between two steps like one that finished, and its neighbours decode on as if it had never
been there. Only a failed forward pass fails the whole batch.

The asyncio side talks to the thread through `generate()`, an async iterator of `Event`s.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from llama_post import telemetry
from llama_post.errors import GenerationError, LlamaPostError
from providers.inline.inference.transformers.adapters import Routing
from providers.inline.inference.transformers.guided import Guide
from providers.inline.inference.transformers.sampling import Sampler, SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")
# Prompts scored in one prefill keep the logits of every position: padded tokens x vocabulary
# floats (4096 x SmolLM2's 49152 are 0.8 GB in fp32); more are prefilled in several.
SCORING_TOKENS = 4096


@dataclass
class TokenInfo:
    id: int
    text: str
    logprob: float | None
    top: list[tuple[str, float]]
    top_ids: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one step added to a sequence: new text (maybe none yet), its tokens, and the end."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    prompt: list[TokenInfo] | None = None  # the prompt's tokens scored, in the first event


class Detokenizer:
    """Turns the growing list of ids into text deltas, holding back what may still change:
    a partial UTF-8 character, or the start of a stop sequence."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.sent = 0

    def push(self, token: int | None) -> tuple[str, bool]:
        """Add a token (None: the end) and return the new safe text and whether a stop matched."""
        if token is not None:
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        longest = max((len(s) for s in self.stop), default=0)
        hits = [i for s in self.stop if (i := text.find(s, max(0, self.sent - longest))) >= 0]
        if hits:
            return self._emit(text[: min(hits)]), True
        if token is None:
            return self._emit(text), False
        held = len(text)
        while held > self.sent and text[held - 1] == "\ufffd":
            held -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, held - self.sent), 0, -1):
                if text[held - k : held] == s[:k]:
                    held -= k
                    break
        return self._emit(text[:held]), False

    def _emit(self, text: str) -> str:
        delta = text[self.sent :] if len(text) > self.sent else ""
        self.sent = max(self.sent, len(text))
        return delta


@dataclass
class Sequence:
    prompt: list[int]
    params: SamplingParams
    adapter: str | None
    sampler: Sampler
    detok: Detokenizer
    sink: Callable[[Event | BaseException], object]
    model: str  # the model asked for (an adapter's id, or the base's): the metrics' label
    guide: Guide | None = None  # the request's constraint, if it has one
    scored: list[TokenInfo] | None = None  # its prompt's logprobs, until the first event has them
    queued_at: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False


class Engine:
    def __init__(
        self, model: Any, tokenizer: Any, device: str, max_batch: int, name: str = "model"
    ) -> None:
        self.name = name  # the base model's id, for the metrics
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch = max_batch
        self.vocab = int(model.config.vocab_size)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id or 0
        self.adapters: set[str] = set()  # names loaded into the (then PEFT-wrapped) model
        self.routing = Routing()  # how a step runs the adapters its rows want
        self.cache_arg = cache_argument(model)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        self._controls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._controls = collections.deque()
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama-post-engine", daemon=True)
        self._thread.start()
        telemetry.watch(self)

    # -- the asyncio side ----------------------------------------------------------------------

    async def generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        adapter: str | None,
        model: str = "",
        guide: Guide | None = None,
    ) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        seq = Sequence(
            prompt=prompt,
            params=params,
            adapter=adapter,
            sampler=Sampler(params, prompt, self.vocab, self.device),
            detok=Detokenizer(self.tokenizer, params.stop),
            sink=lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
            model=model or self.name,
            guide=guide,
        )
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify()
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            seq.cancelled = True  # a caller that leaves early frees its slot at the next step

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread between two steps (to change the model safely)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            self._controls.append((fn, future))
            self._cond.notify()
        return await asyncio.wrap_future(future)

    def prompt_logprobs(
        self, prompt: list[int], adapter: str | None, k: int
    ) -> list[dict[int, tuple[float, int]] | None]:
        """At each prompt position after the first: its token's log-probability given those
        before it, and the `k` likeliest tokens', by id, each with its rank. Run by `call`."""
        ids = torch.tensor([prompt], device=self.device)
        extra = self.routing.route(self.model, [adapter]) if self.adapters else {}
        try:
            logits = self.model(input_ids=ids, use_cache=False, **extra).logits[0, :-1]
        finally:
            self.routing.release()
        logps = torch.log_softmax(logits.float(), dim=-1)
        found: list[dict[int, tuple[float, int]] | None] = [None]
        for row, token in zip(logps, prompt[1:], strict=True):
            entry = {token: (float(row[token]), int((row > row[token]).sum()) + 1)}
            if k:
                values, top = row.topk(k)
                for rank, (i, v) in enumerate(zip(top.tolist(), values.tolist(), strict=True)):
                    entry.setdefault(i, (v, rank + 1))
            found.append(entry)
        return found

    def busy_with(self, adapter: str) -> int:
        with self._cond:
            return sum(1 for s in [*self._waiting, *self._active] if s.adapter == adapter)

    def occupancy(self) -> tuple[int, int]:
        """(sequences in the decode batch, requests waiting), read without stopping a step."""
        return len(self._active), len(self._waiting)

    def stop(self) -> None:
        telemetry.forget(self)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._waiting or self._active or self._controls):
                        self.routing.release()  # idle: the model as it was loaded
                        self._cond.wait()
                    if self._stopping:
                        break
                    controls = list(self._controls)
                    self._controls.clear()
                    room = self.max_batch - len(self._active)
                    admitted = [
                        self._waiting.popleft() for _ in range(min(room, len(self._waiting)))
                    ]
                if controls:  # they may change the adapters: the model as it was loaded
                    self.routing.forget()
                for fn, future in controls:
                    try:
                        future.set_result(fn())
                    except Exception as exc:
                        future.set_exception(exc)
                try:
                    self._drop_done()
                    admitted = [s for s in admitted if not s.cancelled]
                    scoring = [s for s in admitted if s.params.prompt_logprobs is not None]
                    plain = [s for s in admitted if s.params.prompt_logprobs is None]
                    for group in _scoring_groups(scoring):  # apart: they keep every logit
                        self._prefill(group, every_position=True)
                    if plain:
                        self._prefill(plain)
                    if self._active:
                        self._decode()
                except Exception as exc:  # a failed forward fails its batch, not the server
                    log.exception("generation step failed")
                    for seq in [*self._active, *admitted]:
                        if not seq.finished:
                            seq.sink(exc)
                    self._active, self._cache, self._mask = [], None, None

    def _prefill(self, new: list[Sequence], every_position: bool = False) -> None:
        longest = max(len(s.prompt) for s in new)
        ids = torch.tensor(
            [[self.pad_id] * (longest - len(s.prompt)) + s.prompt for s in new], device=self.device
        )
        mask = torch.tensor(
            [[0] * (longest - len(s.prompt)) + [1] * len(s.prompt) for s in new], device=self.device
        )
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = 0 if every_position else 1  # 0: transformers keeps the logits of every position
        logits = self._forward(ids, mask, positions, cache, new, logits_to_keep=keep)
        telemetry.BATCH_SIZE.labels(self.name, "prefill").observe(len(new))
        self._join(cache, mask)
        self._active.extend(new)
        for seq, rows in zip(new, logits, strict=True):
            self._advance(seq, rows[-1], rows if every_position else None)
        self._drop_done()

    def _decode(self) -> None:
        assert self._mask is not None and self._cache is not None
        ids = torch.tensor([[s.generated[-1]] for s in self._active], device=self.device)
        positions = self._mask.sum(-1, keepdim=True)
        mask = F.pad(self._mask, (0, 1), value=1)
        logits = self._forward(ids, mask, positions, self._cache, self._active)
        telemetry.BATCH_SIZE.labels(self.name, "decode").observe(len(self._active))
        self._mask = mask
        for seq, row in zip(self._active, logits[:, -1, :], strict=True):
            self._advance(seq, row)
        self._drop_done()

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        seqs: list[Sequence],
        **extra: Any,
    ) -> torch.Tensor:
        if self.adapters:
            extra |= self.routing.route(self.model, [s.adapter for s in seqs])
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: cache},
            **extra,
        )
        return out.logits  # type: ignore[no-any-return]

    def _advance(
        self, seq: Sequence, logits: torch.Tensor, prompt_logits: torch.Tensor | None = None
    ) -> None:
        try:
            if prompt_logits is not None:
                seq.scored = self._score_prompt(seq, prompt_logits)
            if seq.params.max_tokens == 0:  # the prompt scored: nothing to generate
                seq.finished = True
                seq.sink(Event("", [], "length", len(seq.prompt), 0, prompt=seq.scored))
                return
            self._step(seq, logits)
        except Exception as exc:  # fails its own request, not the batch
            self._end_alone(seq, exc)

    def _score_prompt(self, seq: Sequence, logits: torch.Tensor) -> list[TokenInfo]:
        """Each prompt token's logprob given the tokens before it (the first has none), and the
        `prompt_logprobs` likeliest there, from this row's prefill logits: the prompt is its last
        columns (left padding), and the logits at one position are the next token's."""
        k, prompt, decode = seq.params.prompt_logprobs or 0, seq.prompt, self.tokenizer.decode
        scored = [TokenInfo(prompt[0], decode([prompt[0]]), None, [])]
        if len(prompt) == 1:
            return scored
        raw = torch.log_softmax(logits[-len(prompt) : -1].float(), dim=-1)
        following = torch.tensor(prompt[1:], device=raw.device)
        chosen = raw.gather(1, following[:, None])[:, 0].tolist()
        tops: list[list[tuple[str, float]]] = [[] for _ in chosen]
        if k:
            values, ids = raw.topk(k, dim=-1)
            tops = [
                [(decode([t]), v) for t, v in zip(row_ids, row_values, strict=True)]
                for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
            ]
        for token, logprob, top in zip(prompt[1:], chosen, tops, strict=True):
            scored.append(TokenInfo(token, decode([token]), logprob, top))
        return scored

    def _end_alone(self, seq: Sequence, exc: Exception) -> None:
        seq.finished = True  # leaves the batch at the next `_drop_done`
        done = len(seq.generated)
        if isinstance(exc, LlamaPostError):
            log.warning("a sequence ended alone after %d tokens: %s", done, exc)
        else:
            log.error("a sequence failed after %d tokens", done, exc_info=exc)
            exc = GenerationError(
                f"decoding this request failed after {done} tokens; the server log has the details"
            )
        try:
            seq.sink(exc)
        except RuntimeError:  # its event loop is closed: nobody is left to tell
            log.info("a failed sequence's caller is gone")

    def _step(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Choose `seq`'s next token from its row of the step's logits and send what it adds."""
        if seq.guide is not None:
            seq.guide.mask(logits)  # this row only: a view of the step's logits
        choice = seq.sampler.choose(logits)
        if seq.guide is not None:
            seq.guide.accept(choice.token)
        seq.generated.append(choice.token)
        if len(seq.generated) == 1:
            first = time.monotonic() - seq.queued_at
            telemetry.TIME_TO_FIRST_TOKEN.labels(seq.model).observe(first)
        telemetry.GENERATED_TOKENS.labels(seq.model).inc()
        eos = choice.token in seq.params.eos_ids
        text, stopped = seq.detok.push(None if eos else choice.token)
        finish = None
        if eos or stopped:
            finish = "stop"
        elif seq.guide is not None and seq.guide.done:  # complete: only the end may follow
            finish = "stop"
            text += seq.detok.push(None)[0]
        elif len(seq.generated) >= seq.params.max_tokens:
            finish = "length"
            text += seq.detok.push(None)[0]
        info = TokenInfo(id=choice.token, text="", logprob=choice.logprob, top=[])
        if choice.logprob is not None:  # token texts are for logprobs only: decode them then
            decode = self.tokenizer.decode
            info.text = decode([choice.token])
            info.top = [(decode([t]), lp) for t, lp in choice.top]
            info.top_ids = list(choice.top)
        seq.finished = finish is not None
        scored, seq.scored = seq.scored, None  # sent once, with the first token
        seq.sink(Event(text, [info], finish, len(seq.prompt), len(seq.generated), scored))

    def _join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add freshly prefilled rows to the batch, right-aligning both sides."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])

    def _drop_done(self) -> None:
        keep = [i for i, s in enumerate(self._active) if not (s.finished or s.cancelled)]
        if len(keep) == len(self._active):
            return
        for seq in self._active:
            if seq.cancelled and not seq.finished:
                log.info(
                    "a request left after %d of %d tokens; its slot is free",
                    len(seq.generated),
                    seq.params.max_tokens,
                )
        self._active = [self._active[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(0).nonzero()[0])  # columns that are padding for every row left
        self._mask = mask[:, start:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def cache_argument(model: Any) -> str:
    """The name the model's forward takes its KV cache by: transformers 5.24 renamed
    `past_key_values` to `cache` (the old name warns, and goes in 5.40); older releases and
    architectures not yet moved over still take `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _scoring_groups(seqs: list[Sequence]) -> list[list[Sequence]]:
    """`seqs` in prefill groups of at most SCORING_TOKENS padded tokens (a longer prompt alone)."""
    groups: list[list[Sequence]] = []
    longest = 0
    for seq in seqs:
        longest = max(longest, len(seq.prompt))
        if not groups or (len(groups[-1]) + 1) * longest > SCORING_TOKENS:
            groups.append([])
            longest = len(seq.prompt)
        groups[-1].append(seq)
    return groups


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer K/V holders (`keys`, `values`: [batch, heads, length, dim])."""
    return list(cache.layers)


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the sequence dimension (-2 for K/V, -1 for a mask) on the left up to `width`."""
    if t.dim() == 2:
        return F.pad(t, (width - t.shape[1], 0), value=0)
    return F.pad(t, (0, 0, width - t.shape[-2], 0))
