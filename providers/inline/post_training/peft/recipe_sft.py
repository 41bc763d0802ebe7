"""Supervised fine-tuning, LoRA or full, as one recipe: setup, the step, the save.

Run by a worker process: `python -m providers.inline.post_training.peft.recipe_sft JOB_DIR`.
It resumes from the newest complete checkpoint in the job's checkpoint folder, restoring the
weights, optimizer, LR schedule, RNG and data position, so no batch is replayed or skipped.
SIGTERM (cancel) stops it between two micro-batches.

Under torchrun the same file runs as each rank (`providers/training/distributed.py`): a step's
micro-batches are dealt out among the ranks, rank 0 alone writes metrics and checkpoints.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from llama_post.apis.post_training import StepMetrics, SupervisedFineTuneRequest
from providers.inline.post_training.peft.loop import last_validation_loss, resume, start_worker
from providers.inline.post_training.peft.training import (
    beat,
    injected_fault,
    label_logps,
    load_model,
    pad_id,
    record,
    run,
)
from providers.jobs.folder import JobFolder, read_jsonl
from providers.training import distributed
from providers.training.data import (
    Example,
    collate,
    epoch_order,
    group,
    render,
    repack,
    steps_per_epoch,
    trained_tokens,
)

log = logging.getLogger("recipe_sft")


def main(job_dir: Path) -> None:
    # -- setup ---------------------------------------------------------------------------------
    folder = JobFolder(job_dir)
    spec = folder.read_spec()
    request = spec.request
    assert isinstance(request, SupervisedFineTuneRequest)
    cfg, data_cfg = request.training_config, request.training_config.data
    stop, ranks = start_worker(spec)
    tokenizer, model = load_model(spec, whole_fp32=ranks.sharded)
    pad = pad_id(tokenizer)
    train = _examples(folder.train, tokenizer, request)
    validation = _examples(folder.validation, tokenizer, request)
    plan = steps_per_epoch(train, request, ranks.world)
    log.info(
        "training %s: %d rows, %d validation rows, %d steps, %s parameters trained of %s%s",
        spec.job_uuid,
        len(train),
        len(validation),
        sum(plan),
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
        f"{sum(p.numel() for p in model.parameters()):,}",
        f", on {ranks.world} ranks ({spec.sharding})" if ranks.many else "",
    )
    loop = resume(job_dir, spec, model, tokenizer, plan, ranks, stop)
    model = loop.model

    # -- the loop ------------------------------------------------------------------------------
    model.train()
    ga = cfg.gradient_accumulation_steps * ranks.world  # micro-batches of a step, in all
    train_loss: float | None = None
    for epoch in loop.epochs():
        order = epoch_order(len(train), cfg.seed, epoch, data_cfg.shuffle)
        batches = group(train, order, data_cfg.batch_size, data_cfg.packed, data_cfg.max_seq_len)
        for step_in_epoch in loop.steps():
            started = time.perf_counter()
            step_batches = batches[step_in_epoch * ga : (step_in_epoch + 1) * ga]
            n_items = max(1, sum(trained_tokens(b) for b in step_batches))
            loss_sum, tokens = 0.0, 0
            scale = distributed.loss_scale(ranks)
            for i, batch in enumerate(distributed.micro_batches(step_batches, ranks)):
                loop.micro_batch(i)
                rows = repack(batch)
                inputs = {k: v.to(spec.device) for k, v in collate(rows, pad, True).items()}
                loss = injected_fault(completion_loss(model, inputs), loop.step + 1) / n_items
                torch.autograd.backward(loss * scale)
                loss_sum += float(loss.detach()) * n_items
                tokens += sum(len(e.input_ids) for row in batch for e in row)
            distributed.average_grads(loop.params, ranks)
            loss_sum = distributed.total(loss_sum, ranks)
            tokens = int(distributed.total(tokens, ranks))
            grad_norm, lr = loop.update(loss_sum / n_items)
            loop.advance()
            train_loss = loss_sum / n_items
            validation_loss = None
            if loop.epoch_done and validation:
                validation_loss = _validate(model, validation, request, pad, spec.device)
            if loop.logs(measured=validation_loss is not None):
                record(
                    job_dir,
                    StepMetrics(
                        step=loop.step,
                        epoch=epoch,
                        loss=train_loss,
                        lr=lr,
                        grad_norm=grad_norm,
                        tokens_per_second=tokens / (elapsed := time.perf_counter() - started),
                        tokens=tokens,
                        step_seconds=elapsed,
                        validation_loss=validation_loss,
                        timestamp=time.time(),
                    ),
                )
            loop.end_step({"train_loss": train_loss, "validation_loss": validation_loss})

    # -- the save ------------------------------------------------------------------------------
    loop.finish({"train_loss": train_loss, "validation_loss": last_validation_loss(job_dir)})


def completion_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the trained (labelled) positions only."""
    logps, _ = label_logps(model, inputs)
    return -logps.sum()


def _examples(path: Path, tokenizer: Any, request: SupervisedFineTuneRequest) -> list[Example]:
    data = request.training_config.data
    return [
        render(row, data.data_format, tokenizer, data.train_on_input, data.max_seq_len)
        for row in read_jsonl(path)
    ]


@torch.no_grad()
def _validate(
    model: Any,
    examples: list[Example],
    request: SupervisedFineTuneRequest,
    pad_id: int,
    device: str,
) -> float:
    data = request.training_config.data
    limit = request.training_config.max_validation_steps
    beat("validating")
    model.eval()
    total, count = 0.0, 0
    batches = group(examples, list(range(len(examples))), data.batch_size, False, data.max_seq_len)
    for batch in batches[:limit]:
        n = trained_tokens(batch)
        if n == 0:
            continue
        inputs = {k: v.to(device) for k, v in collate(repack(batch), pad_id, True).items()}
        total += float(completion_loss(model, inputs))
        count += n
    model.train()
    return total / max(1, count)


if __name__ == "__main__":
    run(main, Path(sys.argv[1]))
