"""The training methods as the local trainers see them, one object each, over the core's
(`llama_post/apis/post_training/methods.py`: name, request type, dataset purposes).

Each owns what varies by method on this side: the recipe module a peft worker runs, whether it
runs as torchrun's ranks, how a dataset row becomes the examples the estimate and pre-flight
count, what its estimate's FLOPs add (a reference pass) and what a step samples, which request
fields it refuses, and what it tells the experiment trackers. Nothing else in providers/ asks
which method a job is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from llama_post.apis.post_training import (
    LoraFinetuningConfig,
    PreferenceOptimizeRequest,
    ReinforceRequest,
    SupervisedFineTuneRequest,
    TrainingRequest,
)
from llama_post.apis.post_training import methods as core
from llama_post.apis.post_training.graders import Grader
from llama_post.apis.post_training.models import JobRequest
from providers.training.data import IGNORE, Example, render, render_pair, render_prompt
from providers.training.reinforce import refusals as reinforce_refusals

R = TypeVar("R", bound=JobRequest)
Render = Callable[[dict[str, Any], Any, R], list[Example]]  # a row, the tokenizer, the request


@dataclass(frozen=True)
class Sampled:
    """What a method that samples its own answers runs per prompt of a step, for the estimate:
    `answers` sampled (each at most `max_tokens`), trained on `updates` times, with
    `scoring_passes` more forward passes over them (a reference, the sampling policy's)."""

    answers: int
    max_tokens: int
    updates: int
    scoring_passes: int


def _grpo_sampled(request: ReinforceRequest) -> Sampled:
    algo = request.algorithm_config
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    return Sampled(
        answers=algo.group_size,
        max_tokens=algo.max_tokens,
        updates=algo.num_iterations,
        scoring_passes=int(lora) + int(algo.num_iterations > 1),
    )


def _no_refusals(request: Any) -> list[tuple[str, str]]:
    return []


def _no_params(request: Any) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class TrainingMethod(Generic[R]):
    api: core.Method[R]  # the core's: name, request type, dataset purposes
    recipe: str  # the module inline::peft's worker runs (`python -m recipe JOB_DIR`)
    multi_rank: bool  # the recipe runs as torchrun's ranks (a step's micro-batches dealt out)
    render: Render[R]  # a row as the examples it trains on: one, or a (chosen, rejected) pair
    # a row is a pair, batched whole (never packed)
    pairs: bool = False
    # the estimate counts a forward pass of the starting model over every row the job sees
    reference_pass: bool = False
    # why rows are never packed nor trained on their input (None: the request chooses)
    whole_answers: str | None = None
    grader: Callable[[R], Grader] | None = None  # the request's grader, where it is graded
    # what a step samples (answers to each prompt), where the method samples its own
    sampled: Callable[[R], Sampled] | None = None
    refusals: Callable[[R], list[tuple[str, str]]] = field(default=_no_refusals)
    tracker_params: Callable[[R], dict[str, str]] = field(default=_no_params)  # beyond the shared

    @property
    def name(self) -> str:
        return self.api.name


def _render_sft(
    row: dict[str, Any], tokenizer: Any, request: SupervisedFineTuneRequest
) -> list[Example]:
    data = request.training_config.data
    return [render(row, data.data_format, tokenizer, data.train_on_input, data.max_seq_len)]


def _render_dpo(
    row: dict[str, Any], tokenizer: Any, request: PreferenceOptimizeRequest
) -> list[Example]:
    return list(render_pair(row, tokenizer, request.training_config.data.max_seq_len))


def rollout_shape(row: dict[str, Any], tokenizer: Any, request: ReinforceRequest) -> list[Example]:
    """A prompt row as the longest sequence GRPO may train on: the prompt, then `max_tokens`
    answer tokens (a stand-in: answers are sampled as the job runs). A prompt that leaves no
    room for them within `max_seq_len` has no trained tokens, and is reported."""
    prompt = render_prompt(row, tokenizer)
    budget = request.training_config.data.max_seq_len
    answer = request.algorithm_config.max_tokens
    if len(prompt) + answer > budget:
        return [Example(prompt, [IGNORE] * len(prompt), len(prompt) + answer)]
    pad = tokenizer.eos_token_id or 0
    return [Example(prompt + [pad] * answer, [IGNORE] * len(prompt) + [pad] * answer, len(prompt))]


PEFT = "providers.inline.post_training.peft"

SFT = TrainingMethod(
    api=core.SFT,
    recipe=f"{PEFT}.recipe_sft",
    multi_rank=True,
    render=_render_sft,
)
DPO = TrainingMethod(
    api=core.DPO,
    recipe=f"{PEFT}.recipe_dpo",
    multi_rank=True,
    render=_render_dpo,
    pairs=True,
    reference_pass=True,  # its reference's log-probs, computed once per pair before training
    whole_answers="DPO trains on whole pairs",
    tracker_params=lambda request: {"dpo_beta": str(request.algorithm_config.beta)},
)
GRPO = TrainingMethod(
    api=core.GRPO,
    recipe=f"{PEFT}.recipe_grpo",
    multi_rank=False,  # its rollouts are not split across ranks
    render=rollout_shape,
    whole_answers="GRPO samples",
    grader=lambda request: request.grading,
    sampled=_grpo_sampled,
    refusals=reinforce_refusals,
)

METHODS: dict[str, TrainingMethod[Any]] = {m.name: m for m in (SFT, DPO, GRPO)}


def method_of(request: TrainingRequest) -> TrainingMethod[Any]:
    """The request's method, decided once by its type (`request.method`)."""
    return METHODS[request.method]
