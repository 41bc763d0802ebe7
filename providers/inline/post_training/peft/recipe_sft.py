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
from providers.inline.post_training.peft.training import (
    Cancelled,
    NonFiniteGuard,
    beat,
    injected_fault,
    install_cancel_handler,
    label_logps,
    last_validation_loss,
    load_model,
    make_optimizer,
    make_scheduler,
    record,
    restore_state,
    restore_weights,
    run,
    save,
    seed_everything,
    truncate_metrics,
    write_progress,
)
from providers.jobs.folder import (
    JobFolder,
    checkpoints,
    read_jsonl,
)
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
    spec = JobFolder(job_dir).read_spec()
    request = spec.request
    assert isinstance(request, SupervisedFineTuneRequest)
    cfg = request.training_config
    data_cfg = cfg.data
    stop = install_cancel_handler()
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    ranks = distributed.join(spec.device, spec.sharding)
    seed_everything(cfg.seed)

    tokenizer, model = load_model(spec, whole_fp32=ranks.sharded)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    train = _examples(JobFolder(job_dir).train, tokenizer, request)
    validation = _examples(JobFolder(job_dir).validation, tokenizer, request)
    plan = steps_per_epoch(train, request, ranks.world)
    total_steps = sum(plan)
    log.info(
        "training %s: %d rows, %d validation rows, %d steps, %s parameters trained of %s%s",
        spec.job_uuid,
        len(train),
        len(validation),
        total_steps,
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
        f"{sum(p.numel() for p in model.parameters()):,}",
        f", on {ranks.world} ranks ({spec.sharding})" if ranks.many else "",
    )
    checkpoint_dir = Path(spec.checkpoint_dir)
    latest = checkpoints(checkpoint_dir)
    if latest:  # the weights go in whole, before sharding; the optimizer's state after
        restore_weights(latest[-1][1], model)
    model = distributed.shard(model, ranks, spec.dtype == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, request)
    scheduler = make_scheduler(optimizer, request, total_steps)

    epoch, step_in_epoch, global_step = 0, 0, 0
    if latest:
        epoch, step_in_epoch, global_step = restore_state(
            latest[-1][1], model, optimizer, scheduler, ranks
        )
        log.info("resumed from %s at epoch %d, step %d", latest[-1][1].name, epoch, global_step)
    if ranks.leader:
        truncate_metrics(JobFolder(job_dir).metrics, global_step)

    # -- the loop ------------------------------------------------------------------------------
    model.train()
    guard = NonFiniteGuard(request.supervision)
    every = request.logger_config.log_every_n_steps if request.logger_config else 1
    last_train_loss: float | None = None
    while epoch < cfg.n_epochs:
        order = epoch_order(len(train), cfg.seed, epoch, data_cfg.shuffle)
        batches = group(train, order, data_cfg.batch_size, data_cfg.packed, data_cfg.max_seq_len)
        ga = cfg.gradient_accumulation_steps * ranks.world  # micro-batches of a step, in all
        while step_in_epoch < plan[epoch]:
            started = time.perf_counter()
            step_batches = batches[step_in_epoch * ga : (step_in_epoch + 1) * ga]
            n_items = max(1, sum(trained_tokens(b) for b in step_batches))
            loss_sum, tokens = 0.0, 0
            scale = distributed.loss_scale(ranks)
            for i, batch in enumerate(distributed.micro_batches(step_batches, ranks)):
                if distributed.agree(stop.is_set(), ranks):
                    raise Cancelled
                beat("training", global_step + 1, i)
                rows = repack(batch)
                inputs = {k: v.to(spec.device) for k, v in collate(rows, pad_id, True).items()}
                loss = injected_fault(completion_loss(model, inputs), global_step + 1) / n_items
                torch.autograd.backward(loss * scale)
                loss_sum += float(loss.detach()) * n_items
                tokens += sum(len(e.input_ids) for row in batch for e in row)
            distributed.average_grads(params, ranks)
            loss_sum, tokens = (
                distributed.total(loss_sum, ranks),
                int(distributed.total(tokens, ranks)),
            )
            grad_norm = distributed.clip(params, cfg.max_grad_norm, ranks)
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            if guard.admits(global_step + 1, loss_sum / n_items, grad_norm):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_in_epoch += 1
            global_step += 1
            last_train_loss = loss_sum / n_items
            validation_loss = None
            if step_in_epoch == plan[epoch] and validation:
                validation_loss = _validate(model, validation, request, pad_id, spec.device)
            if ranks.leader and (global_step % every == 0 or validation_loss is not None):
                record(
                    job_dir,
                    StepMetrics(
                        step=global_step,
                        epoch=epoch,
                        loss=last_train_loss,
                        lr=lr,
                        grad_norm=grad_norm,
                        tokens_per_second=tokens / (elapsed := time.perf_counter() - started),
                        tokens=tokens,
                        step_seconds=elapsed,
                        validation_loss=validation_loss,
                        timestamp=time.time(),
                    ),
                )
            if ranks.leader:
                write_progress(job_dir, global_step, total_steps, epoch, spec.device)
            epoch_done = step_in_epoch == plan[epoch]
            next_position = (epoch + 1, 0) if epoch_done else (epoch, step_in_epoch)
            if cfg.save_every and global_step % cfg.save_every == 0 and global_step < total_steps:
                save(
                    checkpoint_dir,
                    model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    request,
                    global_step,
                    next_position,
                    {"train_loss": last_train_loss, "validation_loss": validation_loss},
                    final=False,
                    ranks=ranks,
                )
        epoch, step_in_epoch = epoch + 1, 0

    # -- the save ------------------------------------------------------------------------------
    save(
        checkpoint_dir,
        model,
        tokenizer,
        optimizer,
        scheduler,
        request,
        global_step,
        (cfg.n_epochs, 0),
        {"train_loss": last_train_loss, "validation_loss": last_validation_loss(job_dir)},
        final=True,
        ranks=ranks,
    )
    log.info("done: %d steps", global_step)
    distributed.leave(ranks)


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
