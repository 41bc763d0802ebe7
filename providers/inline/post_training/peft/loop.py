"""The skeleton every peft recipe runs on: the worker's start, resume, the optimizer, the end of
a step (progress, checkpoint) and the final save, written once.

A recipe stays one file read top to bottom, as a torchtune recipe is: it calls these helpers
and keeps its own step. `Loop` holds where the job stands (epoch, step in the epoch, global
step) and what moves it (optimizer, schedule, the non-finite guard); `resume` builds it,
from the newest complete checkpoint when there is one, so a resumed job replays and skips
nothing. No recipe inherits from anything.

A checkpoint is `step-NNNNNN/` in the job's checkpoint folder: the weights (the adapter for
LoRA; the model and tokenizer otherwise), `state.pt` (optimizer, schedule, data position, step,
every rank's RNG) and `checkpoint.json` (step, epoch, metrics, whether it is the final one).
Under torchrun every rank calls these helpers (gathering sharded state is a collective);
rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_post.apis.post_training import LoraFinetuningConfig, TrainingRequest
from providers.inline.post_training.peft.training import (
    Cancelled,
    NonFiniteGuard,
    beat,
    install_cancel_handler,
    make_optimizer,
    make_scheduler,
    peak_memory,
    seed_everything,
)
from providers.jobs.folder import (
    CHECKPOINT_PREFIX,
    JobFolder,
    JobSpec,
    checkpoints,
    read_jsonl,
    write_json_atomic,
)
from providers.training import distributed
from providers.training.distributed import Ranks

log = logging.getLogger("recipe")

ONE = Ranks()  # a single process


def start_worker(spec: JobSpec, multi_rank: bool = True) -> tuple[threading.Event, Ranks]:
    """A worker's first moves: cancel on SIGTERM, its torch threads, its rank (torchrun's,
    where `multi_rank`; else a single process) and the job's seed."""
    stop = install_cancel_handler()
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    ranks = distributed.join(spec.device, spec.sharding) if multi_rank else ONE
    seed_everything(spec.request.training_config.seed)
    return stop, ranks


def resume(
    job_dir: Path,
    spec: JobSpec,
    model: Any,
    tokenizer: Any,
    plan: list[int],
    ranks: Ranks,
    stop: threading.Event,
    updates_per_step: int = 1,
) -> Loop:
    """The model sharded over the ranks, its optimizer and LR schedule (over `plan`'s steps x
    `updates_per_step`), restored with the RNG and data position from the newest complete
    checkpoint if there is one; the metrics past that checkpoint (all, on a fresh start) are
    dropped, as the steps after it will be taken again."""
    request = spec.request
    latest = checkpoints(Path(spec.checkpoint_dir))
    folder = latest[-1][1] if latest else None
    if folder:  # the weights go in whole, before sharding; the optimizer's state after
        restore_weights(folder, model)
    model = distributed.shard(model, ranks, spec.dtype == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, request)
    scheduler = make_scheduler(optimizer, request, sum(plan) * updates_per_step)
    loop = Loop(job_dir, spec, model, tokenizer, params, optimizer, scheduler, plan, ranks, stop)
    if folder:
        loop.epoch, loop.step_in_epoch, loop.step = restore_state(
            folder, model, optimizer, scheduler, ranks
        )
        loop.resumed_from = folder
        log.info("resumed from %s at epoch %d, step %d", folder.name, loop.epoch, loop.step)
    if ranks.leader:
        truncate_metrics(JobFolder(job_dir).metrics, loop.step if folder else -1)
    return loop


@dataclass
class Loop:
    """Where a job stands and what steps it. A recipe runs

    for epoch in loop.epochs():
        for step_in_epoch in loop.steps():
            ... loop.micro_batch(i) before each micro-batch, its backward passes ...
            grad_norm, lr = loop.update(loss)
            loop.advance()
            ... validation, metrics ...
            loop.end_step(checkpoint_metrics)
    loop.finish(final_metrics)
    """

    job_dir: Path
    spec: JobSpec
    model: Any
    tokenizer: Any
    params: list[Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    plan: list[int]  # optimizer steps in each epoch
    ranks: Ranks
    stop: threading.Event
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0  # steps taken in all (the global step)
    resumed_from: Path | None = None  # the checkpoint it resumed from
    guard: NonFiniteGuard = field(init=False)
    every: int = field(init=False)  # steps between two metric records

    def __post_init__(self) -> None:
        request = self.spec.request
        self.guard = NonFiniteGuard(request.supervision)
        self.every = request.logger_config.log_every_n_steps if request.logger_config else 1

    @property
    def request(self) -> TrainingRequest:
        return self.spec.request

    @property
    def total_steps(self) -> int:
        return sum(self.plan)

    @property
    def epoch_done(self) -> bool:
        """Whether the step just taken ended its epoch."""
        return self.step_in_epoch == self.plan[self.epoch]

    def epochs(self) -> Iterator[int]:
        """The epochs left, from the one the job stands in."""
        while self.epoch < self.request.training_config.n_epochs:
            yield self.epoch
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def steps(self) -> Iterator[int]:
        """The epoch's steps left (each one's index in the epoch); `advance` moves on."""
        while self.step_in_epoch < self.plan[self.epoch]:
            yield self.step_in_epoch

    def micro_batch(self, index: int) -> None:
        """Before each micro-batch: stop if cancelled (agreed between ranks), else beat."""
        if distributed.agree(self.stop.is_set(), self.ranks):
            raise Cancelled
        beat("training", self.step + 1, index)

    def update(self, loss: float) -> tuple[float, float]:
        """Clip the gradients and take an optimizer step (unless the guard skips it: a
        non-finite loss or norm), the schedule's step, and clear the gradients. Returns the
        gradients' norm and the rate this update used."""
        max_norm = self.request.training_config.max_grad_norm
        grad_norm = distributed.clip(self.params, max_norm, self.ranks)
        lr: float = self.scheduler.get_last_lr()[0]
        if self.guard.admits(self.step + 1, loss, grad_norm):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    def advance(self) -> None:
        """The step is taken: count it."""
        self.step_in_epoch += 1
        self.step += 1

    def logs(self, measured: bool = False) -> bool:
        """Whether this rank records the step's metrics: rank 0, every `log_every_n_steps`
        steps and at each held-out measurement."""
        return self.ranks.leader and (self.step % self.every == 0 or measured)

    def end_step(self, metrics: dict[str, float | None]) -> None:
        """After a step's metrics: the progress (rank 0), and a checkpoint every `save_every`
        steps but the last (the final save is `finish`'s), positioned at the next step."""
        if self.ranks.leader:
            write_progress(self.job_dir, self.step, self.total_steps, self.epoch, self.spec.device)
        save_every = self.request.training_config.save_every
        if save_every and self.step % save_every == 0 and self.step < self.total_steps:
            position = (self.epoch + 1, 0) if self.epoch_done else (self.epoch, self.step_in_epoch)
            self._save(position, metrics, final=False)

    def finish(self, metrics: dict[str, float | None]) -> None:
        """The final checkpoint, then leave the ranks."""
        self._save((self.request.training_config.n_epochs, 0), metrics, final=True)
        log.info("done: %d steps", self.step)
        distributed.leave(self.ranks)

    def _save(
        self, position: tuple[int, int], metrics: dict[str, float | None], final: bool
    ) -> None:
        save(
            Path(self.spec.checkpoint_dir),
            self.model,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            self.request,
            self.step,
            position,
            metrics,
            final=final,
            ranks=self.ranks,
        )


# -- the files: progress, metrics, checkpoints -------------------------------------------------


def write_progress(job_dir: Path, step: int, total_steps: int, epoch: int, device: str) -> None:
    """Where the job stands, for the server's status and watchdog (the leader rank's alone)."""
    progress = {
        "step": step,
        "total_steps": total_steps,
        "epoch": epoch,
        "peak_memory_bytes": peak_memory(device),
    }
    write_json_atomic(JobFolder(job_dir).progress, progress)


def last_validation_loss(job_dir: Path) -> float | None:
    """The newest validation loss the job's metrics hold, for its final checkpoint."""
    metrics = read_jsonl(JobFolder(job_dir).metrics)
    return next(
        (m["validation_loss"] for m in reversed(metrics) if m.get("validation_loss") is not None),
        None,
    )


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metric lines past the step a resumed job starts from."""
    kept = [m for m in read_jsonl(path) if m["step"] <= step]
    path.write_text("".join(json.dumps(m) + "\n" for m in kept))


def save(
    folder: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    request: TrainingRequest,
    step: int,
    position: tuple[int, int],
    metrics: dict[str, float | None],
    final: bool,
    ranks: Ranks = ONE,
) -> None:
    """Write a checkpoint beside its final place, then rename it there: a crash mid-write
    (a kill, a full disk) leaves the previous checkpoint as the newest complete one.

    Every rank calls it (gathering sharded state is a collective); rank 0 alone writes, and
    the others wait until the checkpoint is complete."""
    beat("saving", step)
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    weights = distributed.model_state(model, ranks, trained_only=lora)
    optimizer_state = distributed.optimizer_state(model, optimizer, ranks)
    rng = distributed.gather(_rng_state(), ranks)
    if ranks.leader:
        _write(
            folder,
            model,
            tokenizer,
            optimizer_state,
            scheduler,
            request,
            step,
            position,
            metrics,
            final,
            weights,
            rng if ranks.many else rng[0],
        )
    distributed.barrier(ranks)


def _write(
    folder: Path,
    model: Any,
    tokenizer: Any,
    optimizer_state: dict[str, Any],
    scheduler: Any,
    request: TrainingRequest,
    step: int,
    position: tuple[int, int],
    metrics: dict[str, float | None],
    final: bool,
    weights: dict[str, Any] | None,
    rng: Any,
) -> None:
    target = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    partial = folder / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        if weights is None:
            model.save_pretrained(str(partial))
        else:  # gathered from the ranks' shards
            model.save_pretrained(str(partial), state_dict=weights)
        if not isinstance(request.tuning, LoraFinetuningConfig):
            tokenizer.save_pretrained(str(partial))
        torch.save(
            {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "position": position,
                "step": step,
                "rng": rng,  # one per rank where there are several
            },
            partial / "state.pt",
        )
        (partial / "checkpoint.json").write_text(
            json.dumps(
                {
                    "step": step,
                    "epoch": position[0] if position[1] else position[0] - 1,
                    **metrics,
                    "created_at": int(time.time()),
                    "final": final,
                }
            )
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # give the space back; keep the last good one
        raise
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    log.info("saved checkpoint %s", target.name)


def restore_weights(folder: Path, model: Any) -> None:
    """A checkpoint's weights into the model, before it is sharded (every rank reads them)."""
    from safetensors.torch import load_file

    adapter = (folder / "adapter_config.json").is_file()
    weights = folder / ("adapter_model.safetensors" if adapter else "model.safetensors")
    state_dict = load_file(str(weights))
    if adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state_dict)
    else:
        model.load_state_dict(state_dict, strict=False)


def restore_state(
    folder: Path, model: Any, optimizer: Any, scheduler: Any, ranks: Ranks
) -> tuple[int, int, int]:
    """A checkpoint's optimizer, schedule and this rank's RNG; returns (epoch, step in epoch,
    global step) to continue from."""
    state = torch.load(folder / "state.pt", weights_only=False)
    distributed.load_optimizer_state(model, optimizer, state["optimizer"], ranks)
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    _set_rng_state(rng[ranks.rank] if isinstance(rng, list) else rng)
    epoch, step_in_epoch = state["position"]
    return epoch, step_in_epoch, state["step"]


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
