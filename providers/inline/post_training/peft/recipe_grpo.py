"""Group relative policy optimization (GRPO), LoRA or full, as one recipe: setup, the rollouts,
the grading, the step, the save.

Run by a worker process: `python -m providers.inline.post_training.peft.recipe_grpo JOB_DIR`.
Each step takes a batch of prompts, samples `group_size` answers to each with the current
policy (through the inference engine's continuous batching, on this process's model, adapter
active), scores them with the job's grader, and turns each score into an advantage within its
group: (reward - group mean), over the group's standard deviation unless told otherwise,
clamped where asked. The policy then takes `num_iterations` optimizer updates of the clipped
objective on those answers:

    ratio = exp(logp - logp_sampling)
    loss  = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl_coef * KL(policy || start)

per answer token, averaged per answer then over answers (`sequence`) or over every answer token
of the step (`token`). KL is the k3 estimator, exp(ref - logp) - (ref - logp) - 1, against the
starting model: with LoRA, the same weights with the adapter disabled, so no second copy exists.

Sampling seeds are a function of the job's seed, the step and the answer's place, so a resumed
job samples exactly what it would have; resume, cancel and checkpoints work as in `recipe_sft`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from llama_post.apis.post_training import (
    LoraFinetuningConfig,
    ReinforceRequest,
    StepMetrics,
)
from llama_post.graders import GradeResult, GraderRunner, GraderSettings, Sample
from providers.inline.inference.transformers.engine import Engine
from providers.inline.inference.transformers.sampling import SamplingParams
from providers.inline.post_training.peft.loop import Loop, resume, start_worker
from providers.inline.post_training.peft.training import (
    beat,
    injected_fault,
    label_logps,
    load_model,
    record,
    run,
)
from providers.jobs.folder import JobFolder, read_jsonl
from providers.training.data import IGNORE, Example, collate, epoch_order, first_fit, render_prompt
from providers.training.scoring import worker_scorer

log = logging.getLogger("recipe_grpo")

SAMPLES_LOGGED = 2  # answers shown in the job's events per logged step


class GraderFailed(Exception):
    """The grader failed on every answer of the job's first batch: it cannot score this data."""


@dataclass
class Answer:
    prompt: int  # its prompt's index in the rows
    ids: list[int]  # the tokens sampled (an end-of-sequence token included)
    text: str  # what the grader reads: the text, cut before a stop sequence


def main(job_dir: Path) -> None:
    # -- setup ---------------------------------------------------------------------------------
    folder = JobFolder(job_dir)
    spec = folder.read_spec()
    request = spec.request
    assert isinstance(request, ReinforceRequest)
    cfg, algo = request.training_config, request.algorithm_config
    stop, ranks = start_worker(spec, multi_rank=False)  # the rollouts are not split across ranks
    tokenizer, model = load_model(spec)
    # the KL's reference: the base, the LoRA adapter disabled (full fine-tuning has none)
    lora = isinstance(request.tuning, LoraFinetuningConfig) and spec.adapter_folder is None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    settings = GraderSettings(**spec.grader_settings)  # type: ignore[arg-type]
    # a score_model grader calls this server's inference, with the key the attempt was granted
    grader = GraderRunner(request.grading, settings=settings, scorer=worker_scorer())
    rows, held_out = read_jsonl(folder.train), read_jsonl(folder.validation)
    prompts = [render_prompt(r, tokenizer) for r in rows]
    held_out_prompts = [render_prompt(r, tokenizer) for r in held_out]
    per_step = cfg.data.batch_size * cfg.gradient_accumulation_steps  # prompts
    plan = plan_steps(len(rows), request)
    engine = Engine(model, tokenizer, spec.device, per_step * algo.group_size)
    sampling = _sampling_params(request, tokenizer, model)
    log.info(
        "GRPO %s: %d prompts (%d held out), %d steps of %d prompts x %d answers, %s "
        "parameters trained",
        spec.job_uuid,
        len(rows),
        len(held_out),
        sum(plan),
        per_step,
        algo.group_size,
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
    )
    loop = resume(job_dir, spec, model, tokenizer, plan, ranks, stop, algo.num_iterations)
    if loop.resumed_from is None and held_out:
        base = _validate(engine, grader, held_out, held_out_prompts, sampling, request)
        log.info("held-out reward before training: %.4f", base)
        record(job_dir, StepMetrics(step=0, epoch=0, validation_reward=base, timestamp=time.time()))

    # -- the loop ------------------------------------------------------------------------------
    last: dict[str, float | None] = {"train_loss": None}
    for epoch in loop.epochs():
        order = epoch_order(len(rows), cfg.seed, epoch, cfg.data.shuffle)
        for step_in_epoch in loop.steps():
            loop.micro_batch(0)
            indices = order[step_in_epoch * per_step : (step_in_epoch + 1) * per_step]
            # the rollouts and their grading: a failed answer scores 0 and is counted
            batch = _roll_out(engine, grader, rows, prompts, indices, sampling, request, loop.step)
            if loop.step == 0 and len(batch.failed) == len(batch.results):
                raise GraderFailed(
                    f"the grader failed on every answer of the first batch: {batch.failed[0]}"
                )
            # the step: num_iterations updates on these answers
            update = _updates(loop, request, batch, prompts, pad, lora)
            loop.advance()
            last = {"train_loss": update.loss, "reward_mean": float(batch.rewards.mean())}
            held: float | None = None
            if loop.epoch_done and held_out:
                held = _validate(engine, grader, held_out, held_out_prompts, sampling, request)
            if loop.logs(measured=held is not None):
                _log_samples(batch)
                record(job_dir, _metrics(loop.step, epoch, batch, update, held))
            loop.end_step({"validation_loss": None, **last})

    # -- the save ------------------------------------------------------------------------------
    engine.stop()
    loop.finish({"validation_loss": None, **last})


@dataclass
class Rollouts:
    """A step's answers, their grades, their rewards ([prompts, group_size]) and how long they
    took to sample."""

    answers: list[Answer]
    results: list[GradeResult]
    rewards: torch.Tensor
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [r.error for r in self.results if r.error is not None]


@dataclass
class Updates:
    """What a step's updates did: the loss (their mean); the summed KL (None without a
    reference), clipped tokens and tokens over every update; the last update's gradient norm
    and rate; the tokens trained and the time it took."""

    loss: float
    kl: float | None
    clipped: float
    tokens: float
    grad_norm: float
    lr: float
    trained_tokens: int
    seconds: float


def _roll_out(
    engine: Engine,
    grader: GraderRunner,
    rows: list[dict[str, Any]],
    prompts: list[list[int]],
    indices: list[int],
    sampling: SamplingParams,
    request: ReinforceRequest,
    step: int,
) -> Rollouts:
    """`group_size` answers to each prompt, sampled together, and their grades."""
    algo = request.algorithm_config
    started = time.perf_counter()
    answers = _sample(
        engine, prompts, indices, sampling, algo.group_size, request.training_config.seed, step
    )
    seconds = time.perf_counter() - started
    results = grader.grade_many([(rows[a.prompt], Sample.of(a.text)) for a in answers])
    rewards = torch.tensor([0.0 if r.error is not None else r.score for r in results])
    return Rollouts(answers, results, rewards.reshape(len(indices), algo.group_size), seconds)


def _updates(
    loop: Loop,
    request: ReinforceRequest,
    batch: Rollouts,
    prompts: list[list[int]],
    pad: int,
    lora: bool,
) -> Updates:
    """The step's `num_iterations` optimizer updates on its answers, each answer's advantage
    taken within its group; the loss is the updates' mean, KL and clipping are over every
    update's tokens."""
    algo, size = request.algorithm_config, request.training_config.data.batch_size
    model, device = loop.model, loop.spec.device
    advantages = group_advantages(
        batch.rewards, algo.advantage_normalization, algo.advantage_clip
    ).flatten()
    started = time.perf_counter()
    examples = [_example(prompts[a.prompt], a.ids) for a in batch.answers]
    per_micro = size * algo.group_size
    micro = [
        list(range(k, min(k + per_micro, len(examples))))
        for k in range(0, len(examples), per_micro)
    ]
    reference = _logps(model, examples, micro, pad, device, adapter=False) if lora else None
    sampled = None
    if algo.num_iterations > 1:  # the sampling policy's log-probs, for the ratio
        sampled = _logps(model, examples, micro, pad, device, adapter=True)
    model.train()
    normalizer = float(
        len(examples)
        if algo.loss_aggregation == "sequence"
        else sum(len(a.ids) for a in batch.answers)
    )
    totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "tokens": 0.0}
    grad_norm = lr = 0.0
    for iteration in range(algo.num_iterations):
        update_loss = 0.0
        for m, seqs in enumerate(micro):
            loop.micro_batch(iteration * len(micro) + m)
            logps, owner = sequence_logps(model, [examples[i] for i in seqs], pad, device)
            parts = GRPOTerms(
                logps=logps,
                sampled=logps.detach() if sampled is None else sampled[m],
                reference=None if reference is None else reference[m],
                advantages=advantages[seqs].to(logps.device),
                owner=owner,
            )
            loss, stats = grpo_loss(
                parts, algo.clip_epsilon, algo.kl_coef, algo.loss_aggregation, normalizer
            )
            loss = injected_fault(loss, loop.step + 1)
            torch.autograd.backward(loss)
            update_loss += float(loss.detach())
            for name in ("kl", "clipped", "tokens"):
                totals[name] += stats[name]
        totals["loss"] += update_loss / algo.num_iterations
        grad_norm, lr = loop.update(update_loss)
    return Updates(
        loss=totals["loss"],
        kl=totals["kl"] if reference is not None else None,
        clipped=totals["clipped"],
        tokens=totals["tokens"],
        grad_norm=grad_norm,
        lr=lr,
        trained_tokens=sum(len(e.input_ids) for e in examples) * algo.num_iterations,
        seconds=time.perf_counter() - started,
    )


def _metrics(
    step: int, epoch: int, batch: Rollouts, update: Updates, held: float | None
) -> StepMetrics:
    rewards, trained = batch.rewards, update.trained_tokens
    sampled_tokens = sum(len(a.ids) for a in batch.answers)
    return StepMetrics(
        step=step,
        epoch=epoch,
        loss=update.loss,
        lr=update.lr,
        grad_norm=update.grad_norm,
        tokens=trained,
        tokens_per_second=trained / update.seconds,
        step_seconds=batch.seconds + update.seconds,
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std(correction=0)),
        rewards_by_grader=_by_grader(batch.results),
        grader_errors=len(batch.failed),
        zero_variance_groups=float((rewards.std(-1, correction=0) == 0).float().mean()),
        kl=update.kl / update.tokens if update.kl is not None else None,
        clip_fraction=update.clipped / update.tokens,
        completion_length=sampled_tokens / len(batch.answers),
        sampling_tokens_per_second=sampled_tokens / batch.seconds,
        sampling_seconds=batch.seconds,
        training_tokens_per_second=trained / update.seconds,
        validation_reward=held,
        timestamp=time.time(),
    )


def _log_samples(batch: Rollouts) -> None:
    """A few answers of the step and their rewards, into the log (hence the job's events)."""
    pairs = list(zip(batch.answers, batch.results, strict=True))
    for a, r in pairs[:: max(1, len(pairs) // SAMPLES_LOGGED)][:SAMPLES_LOGGED]:
        log.info(
            "sample (reward %.3f%s): %r",
            0.0 if r.error else r.score,
            f", grader error: {r.error}" if r.error else "",
            a.text[:200],
        )


def _sampling_params(request: ReinforceRequest, tokenizer: Any, model: Any) -> SamplingParams:
    algo = request.algorithm_config
    eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
    return SamplingParams(
        max_tokens=algo.max_tokens,
        temperature=algo.temperature,
        top_p=algo.top_p,
        stop=tuple(algo.stop),
        eos_ids=frozenset(e for e in eos if e is not None),
    )


# -- the math ----------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, normalization: Literal["std", "none"], limit: float | None
) -> torch.Tensor:
    """Each answer's reward against its group's ([prompts, group_size]): centred on the group's
    mean, over its (sample) standard deviation + 1e-4 for `std`, clamped to +-`limit`."""
    advantages = rewards - rewards.mean(-1, keepdim=True)
    if normalization == "std":
        advantages = advantages / (rewards.std(-1, keepdim=True) + 1e-4)
    if limit is not None:
        advantages = advantages.clamp(-limit, limit)
    return advantages


@dataclass
class GRPOTerms:
    """Per answer token (flat): the policy's log-prob, the sampling policy's, the starting
    model's (None: no KL), and the answer it belongs to; per answer, its advantage."""

    logps: torch.Tensor
    sampled: torch.Tensor
    reference: torch.Tensor | None
    advantages: torch.Tensor
    owner: torch.Tensor


def grpo_loss(
    terms: GRPOTerms,
    clip_epsilon: float,
    kl_coef: float,
    aggregation: Literal["sequence", "token"],
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped policy-gradient loss of these answers, as their share of the step's: summed
    per token, each token weighted 1 / its answer's length (`sequence`) or 1 (`token`), over
    `normalizer` (the step's answers, or its answer tokens). Also the summed KL, the clipped
    tokens and the token count, for the metrics."""
    ratio = torch.exp(terms.logps - terms.sampled)
    advantage = terms.advantages[terms.owner]
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * advantage
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if terms.reference is not None:
        delta = terms.reference - terms.logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + kl_coef * kl
    if aggregation == "sequence":
        lengths = torch.bincount(terms.owner, minlength=len(terms.advantages)).to(per_token.dtype)
        per_token = per_token / lengths[terms.owner]
    loss = per_token.sum() / normalizer
    stats = {
        "kl": float(kl.detach().sum()),
        "clipped": float((clipped < unclipped).float().sum()),
        "tokens": float(len(per_token)),
    }
    return loss, stats


def sequence_logps(
    model: Any, examples: list[Example], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-prob of each answer token of each example, flat, and the example it belongs to.
    The examples run packed in the fewest rows that hold them (no attention across them)."""
    width = max(len(e.input_ids) for e in examples)
    rows = first_fit(list(range(len(examples))), lambda i: len(examples[i].input_ids), width)
    batch = collate([[examples[i] for i in row] for row in rows], pad_id, packed=True)
    logps, _ = label_logps(model, {k: v.to(device) for k, v in batch.items()})
    owner = [i for row in rows for i in row for _ in range(examples[i].trained)]
    return logps, torch.tensor(owner, dtype=torch.long, device=logps.device)


# -- helpers -----------------------------------------------------------------------------------


def plan_steps(count: int, request: ReinforceRequest) -> list[int]:
    """Optimizer steps (batches of prompts) in each epoch; a last partial batch is dropped."""
    cfg = request.training_config
    per_step = cfg.data.batch_size * cfg.gradient_accumulation_steps
    steps = max(1, count // per_step)
    return [min(steps, cfg.max_steps_per_epoch or steps)] * cfg.n_epochs


def _sample(
    engine: Engine,
    prompts: list[list[int]],
    indices: list[int],
    params: SamplingParams,
    group_size: int,
    seed: int,
    step: int,
) -> list[Answer]:
    """`group_size` answers to each prompt, decoded together; answer j of step s has its own
    seed, so a resumed job draws the same answers."""
    wanted = [(i, j) for i in indices for j in range(group_size)]
    engine.model.eval()

    async def one(k: int, prompt: int) -> Answer:
        seeded = SamplingParams(**{**params.__dict__, "seed": _seed(seed, step, k)})
        ids: list[int] = []
        text: list[str] = []
        async for event in engine.generate(prompts[prompt], seeded, None):
            ids += [t.id for t in event.tokens]
            text.append(event.text)
        return Answer(prompt, ids, "".join(text))

    async def every() -> list[Answer]:
        return list(await asyncio.gather(*(one(k, i) for k, (i, _) in enumerate(wanted))))

    return asyncio.run(every())


def _seed(seed: int, step: int, k: int) -> int:
    return (seed * 1_000_003 + step * 65_537 + k) % (2**63)


def _example(prompt: list[int], answer: list[int]) -> Example:
    ids = prompt + answer
    return Example(ids, [IGNORE] * len(prompt) + answer, len(ids))


@torch.no_grad()
def _logps(
    model: Any,
    examples: list[Example],
    micro: list[list[int]],
    pad_id: int,
    device: str,
    adapter: bool,
) -> list[torch.Tensor]:
    """Each micro-batch's answer-token log-probs without gradients: the current policy's, or
    (adapter=False) the starting model's, the LoRA adapter disabled for the pass."""
    model.eval()
    out = []
    for seqs in micro:
        batch = [examples[i] for i in seqs]
        if adapter:
            logps, _ = sequence_logps(model, batch, pad_id, device)
        else:
            with model.disable_adapter():
                logps, _ = sequence_logps(model, batch, pad_id, device)
        out.append(logps)
    return out


def _validate(
    engine: Engine,
    grader: GraderRunner,
    rows: list[dict[str, Any]],
    prompts: list[list[int]],
    params: SamplingParams,
    request: ReinforceRequest,
) -> float:
    """Mean score of one answer to each held-out prompt (the same seeds each time, so two
    validations differ by the policy alone)."""
    beat("validating")
    limit = request.training_config.max_validation_steps
    count = (
        len(rows)
        if limit is None
        else min(len(rows), limit * request.training_config.data.batch_size)
    )
    answers = _sample(
        engine, prompts, list(range(count)), params, 1, request.training_config.seed, -1
    )
    results = grader.grade_many([(rows[a.prompt], Sample.of(a.text)) for a in answers])
    return sum(0.0 if r.error else r.score for r in results) / max(1, len(results))


def _by_grader(results: list[Any]) -> dict[str, float] | None:
    names = sorted({name for r in results for name in r.sub_scores})
    if not names:
        return None
    return {n: sum(r.sub_scores.get(n, 0.0) for r in results) / len(results) for n in names}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


if __name__ == "__main__":
    run(main, Path(sys.argv[1]))
