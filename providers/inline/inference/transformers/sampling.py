"""Choosing the next token of one sequence: penalties, temperature, top-k, top-p, seed.

A temperature below `GREEDY_BELOW` decodes greedily, as vLLM's does (its `_SAMPLING_EPS`): dividing
by it would overflow. Logits are scaled after their largest is subtracted, so the best token's is
0 at any temperature and the others' only fall (vLLM instead raises a temperature under 1e-2 to
1e-2). What still gives no distribution (the model's own output not finite) fails this sequence
alone, with a `GenerationError` that says why; the engine decodes its neighbours on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llama_post.errors import GenerationError

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int  # 0: score the prompt only (`prompt_logprobs`), generate nothing
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # None: none; k: the chosen token's and k alternatives
    prompt_logprobs: int | None = None  # the same for each prompt token after the first
    stop: tuple[str, ...] = ()
    eos_ids: frozenset[int] = field(default_factory=frozenset)


@dataclass
class Choice:
    token: int
    logprob: float | None
    top: list[tuple[int, float]]


class Sampler:
    """Per-sequence state: its RNG and the counts the penalties read."""

    def __init__(self, params: SamplingParams, prompt: list[int], vocab: int, device: str) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.counts: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab, device=device)
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt, dtype=torch.long, device=device)] = True

    def choose(self, logits: torch.Tensor) -> Choice:
        p = self.params
        logits = logits.float()
        if bool((logits.isnan() | logits.isposinf()).any()):  # -inf: masked out by a grammar
            raise GenerationError(
                "the model's output for this request is not finite (NaN or inf); its decoding "
                "stopped here"
            )
        logprob, top = None, []
        if p.logprobs is not None:
            raw = torch.log_softmax(logits, dim=-1)
        logits = self._penalized(logits)
        if p.temperature < GREEDY_BELOW:
            token = int(torch.argmax(logits))
        else:
            token = self._draw((logits - logits.max()) / p.temperature)
        if p.logprobs is not None:
            logprob = float(raw[token])
            if p.logprobs:
                values, ids = raw.topk(p.logprobs)
                pairs = zip(ids.tolist(), values.tolist(), strict=True)
                top = [(i, v) for i, v in pairs if v != float("-inf")]  # not masked out
        self._count(token)
        return Choice(token, logprob, top)

    def _penalized(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.seen is not None:
            picked = logits[self.seen]
            logits = logits.clone()
            logits[self.seen] = torch.where(
                picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty
            )
        if self.counts is not None:
            logits = logits - p.frequency_penalty * self.counts
            logits = logits - p.presence_penalty * (self.counts > 0).float()
        return logits

    def _draw(self, logits: torch.Tensor) -> int:
        p = self.params
        if p.top_k is not None and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            drop = probs.cumsum(-1) - probs >= p.top_p
            drop[0] = False  # the most likely stays, even for a top_p that is 0 in float32
            logits = logits.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if not bool(probs.isfinite().all()):
            raise GenerationError(
                f"no next token can be drawn: temperature={p.temperature}, top_p={p.top_p}, "
                f"top_k={p.top_k}, presence_penalty={p.presence_penalty}, frequency_penalty="
                f"{p.frequency_penalty} and repetition_penalty={p.repetition_penalty} leave no "
                "finite distribution over it"
            )
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _count(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True
