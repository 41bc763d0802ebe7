"""Supervised fine-tuning, LoRA or full, as one recipe: setup, the step, the save.

Run by a worker process: `python -m providers.inline.post_training.peft.recipe_sft JOB_DIR`.
It resumes from the newest complete checkpoint in the job's checkpoint folder, restoring the
weights, optimizer, LR schedule, RNG and data position, so no batch is replayed or skipped.
SIGTERM (cancel) stops it between two micro-batches.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch

from llama_post.apis.post_training import (
    LoraFinetuningConfig,
    StepMetrics,
    SupervisedFineTuneRequest,
)
from providers.inline.post_training.peft.data import (
    IGNORE,
    Example,
    collate,
    epoch_order,
    group,
    render,
    steps_per_epoch,
    trained_tokens,
)
from providers.inline.post_training.peft.job import (
    CHECKPOINT_PREFIX,
    JobSpec,
    checkpoints,
    read_jsonl,
    write_json_atomic,
)

log = logging.getLogger("recipe_sft")


class Cancelled(Exception):
    pass


def main(job_dir: Path) -> None:
    # -- setup ---------------------------------------------------------------------------------
    spec = JobSpec.model_validate_json((job_dir / "job.json").read_text())
    request = spec.request
    cfg = request.training_config
    data_cfg = cfg.data_config
    stop = _install_cancel_handler()
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    _seed(cfg.seed)

    tokenizer, model = _load_model(spec)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    train = _examples(job_dir / "train.jsonl", tokenizer, request)
    validation = _examples(job_dir / "validation.jsonl", tokenizer, request)
    plan = steps_per_epoch(train, request)
    total_steps = sum(plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, request)
    scheduler = _scheduler(optimizer, request, total_steps)
    log.info(
        "training %s: %d rows, %d validation rows, %d steps, %s parameters trained of %s",
        spec.job_uuid,
        len(train),
        len(validation),
        total_steps,
        f"{sum(p.numel() for p in params):,}",
        f"{sum(p.numel() for p in model.parameters()):,}",
    )

    checkpoint_dir = Path(spec.checkpoint_dir)
    epoch, step_in_epoch, global_step = 0, 0, 0
    latest = checkpoints(checkpoint_dir)
    if latest:
        epoch, step_in_epoch, global_step = _restore(latest[-1][1], model, optimizer, scheduler)
        log.info("resumed from %s at epoch %d, step %d", latest[-1][1].name, epoch, global_step)
    _truncate_metrics(job_dir / "metrics.jsonl", global_step)

    # -- the loop ------------------------------------------------------------------------------
    model.train()
    every = request.logger_config.log_every_n_steps if request.logger_config else 1
    last_train_loss: float | None = None
    while epoch < cfg.n_epochs:
        order = epoch_order(len(train), cfg.seed, epoch, data_cfg.shuffle)
        batches = group(train, order, data_cfg.batch_size, data_cfg.packed, data_cfg.max_seq_len)
        ga = cfg.gradient_accumulation_steps
        while step_in_epoch < plan[epoch]:
            started = time.perf_counter()
            micro = batches[step_in_epoch * ga : (step_in_epoch + 1) * ga]
            n_items = max(1, sum(trained_tokens(b) for b in micro))
            loss_sum, tokens = 0.0, 0
            for batch in micro:
                if stop.is_set():
                    raise Cancelled
                inputs = {
                    k: v.to(spec.device) for k, v in collate(batch, pad_id, data_cfg.packed).items()
                }
                loss = completion_loss(model, inputs) / n_items
                torch.autograd.backward(loss)
                loss_sum += float(loss.detach()) * n_items
                tokens += sum(len(e.input_ids) for row in batch for e in row)
            grad_norm = _clip(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_in_epoch += 1
            global_step += 1
            last_train_loss = loss_sum / n_items
            validation_loss = None
            if step_in_epoch == plan[epoch] and validation:
                validation_loss = _validate(model, validation, request, pad_id, spec.device)
            if global_step % every == 0 or validation_loss is not None:
                _record(
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
            write_json_atomic(
                job_dir / "progress.json",
                {"step": global_step, "total_steps": total_steps, "epoch": epoch},
            )
            epoch_done = step_in_epoch == plan[epoch]
            next_position = (epoch + 1, 0) if epoch_done else (epoch, step_in_epoch)
            if cfg.save_every and global_step % cfg.save_every == 0 and global_step < total_steps:
                _save(
                    checkpoint_dir,
                    model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    request,
                    global_step,
                    next_position,
                    last_train_loss,
                    validation_loss,
                    final=False,
                )
        epoch, step_in_epoch = epoch + 1, 0

    # -- the save ------------------------------------------------------------------------------
    metrics = read_jsonl(job_dir / "metrics.jsonl")
    validation_loss = next(
        (m["validation_loss"] for m in reversed(metrics) if m.get("validation_loss") is not None),
        None,
    )
    _save(
        checkpoint_dir,
        model,
        tokenizer,
        optimizer,
        scheduler,
        request,
        global_step,
        (cfg.n_epochs, 0),
        last_train_loss,
        validation_loss,
        final=True,
    )
    log.info("done: %d steps", global_step)


def _load_model(spec: JobSpec) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    request = spec.request
    dtype = torch.bfloat16 if request.training_config.dtype == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(spec.base_folder)
    model: Any = AutoModelForCausalLM.from_pretrained(spec.base_folder, dtype=dtype)
    efficiency = request.training_config.efficiency_config
    if efficiency and efficiency.enable_activation_checkpointing:
        model.gradient_checkpointing_enable()
    algo = request.algorithm_config
    if isinstance(algo, LoraFinetuningConfig):
        from peft import LoraConfig, PeftModel, get_peft_model

        if spec.adapter_folder:
            model = PeftModel.from_pretrained(model, spec.adapter_folder, is_trainable=True)
        else:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=algo.rank,
                    lora_alpha=algo.alpha,  # type: ignore[arg-type]  # peft takes floats too
                    lora_dropout=algo.dropout,
                    target_modules=lora_targets(algo),
                    use_dora=algo.use_dora,
                    task_type="CAUSAL_LM",
                ),
            )
    return tokenizer, model.to(spec.device)


LOSS_CHUNK = 1024  # trained positions whose logits exist at once


def completion_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the trained positions only.

    The decoder runs once; the output head then runs on the positions that have a label, in
    chunks whose logits are recomputed in the backward pass. So the [batch, length, vocab]
    logits of the whole batch never exist, and no head work is spent on prompt or padding.
    """
    from torch.nn.functional import cross_entropy
    from torch.utils.checkpoint import checkpoint

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = dict(inputs)
    targets = inputs.pop("labels")[:, 1:]
    hidden = causal_lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    keep = targets != IGNORE
    states, labels = hidden[:, :-1][keep], targets[keep]
    head = causal_lm.get_output_embeddings()

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(head(h).float(), y, reduction="sum")

    total: torch.Tensor = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(labels), LOSS_CHUNK):
        part = slice(start, start + LOSS_CHUNK)
        chunk = checkpoint(chunk_loss, states[part], labels[part], use_reentrant=False)
        total = total + cast(torch.Tensor, chunk)
    return total


def lora_targets(algo: LoraFinetuningConfig) -> list[str]:
    targets = list(algo.lora_attn_modules)
    if algo.apply_lora_to_mlp:
        targets += ["gate_proj", "up_proj", "down_proj"]
    if algo.apply_lora_to_output:
        targets.append("lm_head")
    return targets


def _examples(path: Path, tokenizer: Any, request: SupervisedFineTuneRequest) -> list[Example]:
    data = request.training_config.data_config
    return [
        render(row, data.data_format, tokenizer, data.train_on_input, data.max_seq_len)
        for row in read_jsonl(path)
    ]


def _optimizer(params: list[Any], request: SupervisedFineTuneRequest) -> torch.optim.Optimizer:
    opt = request.training_config.optimizer_config
    if opt.optimizer_type == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.optimizer_type == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def _scheduler(
    optimizer: torch.optim.Optimizer, request: SupervisedFineTuneRequest, total: int
) -> Any:
    opt = request.training_config.optimizer_config
    warmup = opt.num_warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if opt.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if opt.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _clip(params: list[Any], max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    return float(norm)


@torch.no_grad()
def _validate(
    model: Any,
    examples: list[Example],
    request: SupervisedFineTuneRequest,
    pad_id: int,
    device: str,
) -> float:
    data = request.training_config.data_config
    limit = request.training_config.max_validation_steps
    model.eval()
    total, count = 0.0, 0
    batches = group(examples, list(range(len(examples))), data.batch_size, False, data.max_seq_len)
    for batch in batches[:limit]:
        n = trained_tokens(batch)
        if n == 0:
            continue
        inputs = {k: v.to(device) for k, v in collate(batch, pad_id, False).items()}
        total += float(completion_loss(model, inputs))
        count += n
    model.train()
    return total / max(1, count)


def _record(job_dir: Path, metrics: StepMetrics) -> None:
    with (job_dir / "metrics.jsonl").open("a") as f:
        f.write(metrics.model_dump_json() + "\n")
    log.info(
        "step %d epoch %d loss %.4f lr %.2e%s",
        metrics.step,
        metrics.epoch,
        metrics.loss or 0.0,
        metrics.lr or 0.0,
        f" validation loss {metrics.validation_loss:.4f}"
        if metrics.validation_loss is not None
        else "",
    )


def _truncate_metrics(path: Path, step: int) -> None:
    kept = [m for m in read_jsonl(path) if m["step"] <= step]
    path.write_text("".join(json.dumps(m) + "\n" for m in kept))


def _save(
    folder: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    request: SupervisedFineTuneRequest,
    step: int,
    position: tuple[int, int],
    train_loss: float | None,
    validation_loss: float | None,
    final: bool,
) -> None:
    """Write a checkpoint beside its final place, then rename it there: a crash mid-write
    leaves the previous checkpoint as the newest complete one."""
    target = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    partial = folder / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial))
    if not isinstance(request.algorithm_config, LoraFinetuningConfig):
        tokenizer.save_pretrained(str(partial))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "position": position,
            "step": step,
            "rng": _rng_state(),
        },
        partial / "state.pt",
    )
    (partial / "checkpoint.json").write_text(
        json.dumps(
            {
                "step": step,
                "epoch": position[0] if position[1] else position[0] - 1,
                "train_loss": train_loss,
                "validation_loss": validation_loss,
                "created_at": int(time.time()),
                "final": final,
            }
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    log.info("saved checkpoint %s", target.name)


def _restore(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, int, int]:
    from safetensors.torch import load_file

    weights = folder / (
        "adapter_model.safetensors"
        if (folder / "adapter_config.json").is_file()
        else "model.safetensors"
    )
    state_dict = load_file(str(weights))
    if (folder / "adapter_config.json").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state_dict)
    else:
        model.load_state_dict(state_dict, strict=False)
    state = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    epoch, step_in_epoch = state["position"]
    return epoch, step_in_epoch, state["step"]


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def _install_cancel_handler() -> Any:
    import threading

    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    return stop


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        main(Path(sys.argv[1]))
    except Cancelled:
        log.info("cancelled")
        sys.exit(3)
    except MemoryError:
        log.exception("out of memory")
        sys.exit(4)
