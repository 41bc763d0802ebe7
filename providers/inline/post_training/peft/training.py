"""What the recipes share within a step: the model, optimizer and schedule, the log-probabilities
of labelled tokens, metrics, supervision (heartbeat, non-finite guard) and cancellation. The
skeleton around the step (resume, checkpoints, the final save) is `loop.py`."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import torch

from llama_post.apis.post_training import (
    EfficiencyConfig,
    LoraFinetuningConfig,
    StepMetrics,
    SupervisionConfig,
    TrainingRequest,
)
from llama_post.apis.post_training.models import Phase
from providers.jobs.folder import (
    EXIT_CANCELLED,
    EXIT_NONFINITE,
    EXIT_OUT_OF_MEMORY,
    Heartbeat,
    JobFolder,
    JobSpec,
)
from providers.training.data import IGNORE
from providers.training.preflight import lora_targets

log = logging.getLogger("recipe")

LOSS_CHUNK = 1024  # labelled positions whose logits exist at once


class Cancelled(Exception):
    pass


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's, else its end of sequence."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def load_model(spec: JobSpec, whole_fp32: bool = False) -> tuple[Any, Any]:
    """The tokenizer and the model to train: a fresh LoRA adapter on the base, an existing
    adapter to continue, or the whole model.

    In bf16 (mixed precision), what is trained stays fp32: LoRA's weights sit in fp32 over a
    bf16 base (the frozen base needs no master copy), while full fine-tuning keeps the model
    in fp32 and runs its decoder and output head under bf16 autocast. The optimizer's state
    follows its parameters, so it is fp32 too; the loss is taken in fp32 (`head_logps`).
    `whole_fp32` loads a LoRA base in fp32 too: FSDP2 shards a layer's parameters as one
    dtype and casts them to bf16 for the products itself (`distributed.shard`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    request = spec.request
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    log.info("computing in %s (%s)", spec.dtype, spec.dtype_reason or "asked for")
    dtype = torch.bfloat16 if spec.dtype == "bf16" and lora and not whole_fp32 else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(spec.base_folder)
    model: Any = AutoModelForCausalLM.from_pretrained(spec.base_folder, dtype=dtype)
    efficiency = request.training_config.efficiency_config or EfficiencyConfig()
    if efficiency.enable_activation_checkpointing or spec.low_memory:
        every = 1 if spec.low_memory else efficiency.activation_checkpointing_every_n_layers
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every
        )
    algo = request.tuning
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
                    target_modules=lora_targets(
                        algo, {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
                    ),
                    use_dora=algo.use_dora,
                    task_type="CAUSAL_LM",
                ),
            )
        for param in model.parameters():  # peft upcasts new adapters; a loaded one too
            if param.requires_grad:
                param.data = param.data.float()
    elif spec.dtype == "bf16":  # fp32 master weights, bf16 products (as accelerate does it)
        device_type = "cuda" if spec.device.startswith("cuda") else "cpu"
        for module in (model.get_decoder(), model.get_output_embeddings()):
            autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16)
            module.forward = autocast(module.forward)
    return tokenizer, model.to(spec.device)


def label_logps(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability of each labelled token, and where those tokens are.

    Returns the log-probs in row-major order of the positions, and the mask of those positions
    (shape of labels[:, 1:]).
    """
    inputs = dict(inputs)
    targets = inputs.pop("labels")[:, 1:]
    hidden = decoder_states(model, inputs)
    keep = targets != IGNORE
    return head_logps(model, hidden[:, :-1][keep], targets[keep]), keep


def decoder_states(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden states (the output head is not run)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden: torch.Tensor = causal_lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    return hidden


def head_logps(model: Any, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label | state) for each (state, label), the output head run on those states only,
    in chunks, so the [batch, length, vocab] logits never exist and no head work is spent on
    prompts or padding.

    A frozen head (LoRA leaves it alone) gets its input gradient in the forward pass, from the
    chunk's probabilities while they exist: two matrix products per chunk instead of three.
    A trained head's chunks are recomputed in the backward pass instead.
    """
    from torch.nn.functional import cross_entropy
    from torch.utils.checkpoint import checkpoint

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    frozen = isinstance(head, torch.nn.Linear) and not any(
        p.requires_grad for p in head.parameters()
    )

    def chunk_logps(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if frozen:
            return frozen_head_logps(h, y, head.weight, head.bias)
        return -cross_entropy(head(h).float(), y, reduction="none")

    parts = [
        chunk_logps(states[start : start + LOSS_CHUNK], labels[start : start + LOSS_CHUNK])
        if frozen
        else cast(
            torch.Tensor,
            checkpoint(
                chunk_logps,
                states[start : start + LOSS_CHUNK],
                labels[start : start + LOSS_CHUNK],
                use_reentrant=False,
            ),
        )
        for start in range(0, len(labels), LOSS_CHUNK)
    ]
    return torch.cat(parts) if parts else states.new_zeros(0, dtype=torch.float32)


def frozen_head_logps(
    h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    out: torch.Tensor = FrozenHeadLogps.apply(h, y, weight, bias)  # type: ignore[no-untyped-call]
    return out


class FrozenHeadLogps(torch.autograd.Function):
    """log softmax(h W^T + b)[y] for a head that is not trained.

    d logp / dh = W[y] - softmax @ W, computed in the forward pass and kept (one row of
    `hidden` floats per token), so the backward pass is a scaling and the logits are never
    recomputed."""

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = torch.nn.functional.linear(h, weight, bias).float()
        norm = logits.logsumexp(-1, keepdim=True)
        logps = logits.gather(1, y[:, None]).sub_(norm).squeeze(1)
        if ctx.needs_input_grad[0]:
            probs = logits.sub_(norm).exp_()
            probs[torch.arange(len(y)), y] -= 1.0  # softmax - onehot
            ctx.save_for_backward(-(probs.to(weight.dtype) @ weight))
        return logps

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (dlogp_dh,) = ctx.saved_tensors
        return grad[:, None].to(dlogp_dh.dtype) * dlogp_dh, None, None, None


# -- supervision: what the server's watchdog and retries need from a recipe -------------------

_heartbeat: Heartbeat | None = None


def beat(phase: Phase, step: int | None = None, micro: int | None = None) -> None:
    """Evidence of progress for the server's stall watchdog (`Heartbeat`)."""
    if _heartbeat is not None:
        _heartbeat(phase, step, micro)


class NonFinite(Exception):
    pass


class NonFiniteGuard:
    """A non-finite loss or gradient norm stops the job naming the step, or (`on_nonfinite:
    skip`) skips that optimizer step, at most `max_skipped_steps` times."""

    def __init__(self, supervision: SupervisionConfig) -> None:
        self.supervision = supervision
        self.skipped = 0

    def admits(self, step: int, loss: float, grad_norm: float) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return True
        what = f"loss ({loss})" if not math.isfinite(loss) else f"gradient norm ({grad_norm})"
        allowed = self.supervision.max_skipped_steps
        if self.supervision.on_nonfinite == "skip" and self.skipped < allowed:
            self.skipped += 1
            log.warning(
                "non-finite %s at step %d: step skipped (%d of %d)",
                what,
                step,
                self.skipped,
                allowed,
            )
            return False
        skipped = f" after skipping {self.skipped} step(s)" if self.skipped else ""
        raise NonFinite(f"non-finite {what} at step {step}{skipped}")


def peak_memory(device: str) -> int:
    """The worker's peak memory so far: its peak RSS (CUDA: the allocator's peak)."""
    import resource

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def injected_fault(loss: torch.Tensor, step: int) -> torch.Tensor:
    """Test hook: LLAMA_POST_TEST_FAULT=nan@N makes step N's loss NaN; stall@N wedges the
    worker at step N (it stops making progress, as a hung collective or driver would)."""
    fault = os.environ.get("LLAMA_POST_TEST_FAULT", "")
    kind, _, at = fault.partition("@")
    if not at or int(at) != step:
        return loss
    if kind == "nan":
        return loss * float("nan")
    if kind == "stall":
        while True:
            time.sleep(1.0)
    return loss


def make_optimizer(params: list[Any], request: TrainingRequest) -> torch.optim.Optimizer:
    opt = request.training_config.optimizer
    if opt.optimizer_type == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.optimizer_type == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, request: TrainingRequest, total: int) -> Any:
    opt = request.training_config.optimizer
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


def clip(params: list[Any], max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    return float(norm)


def record(job_dir: Path, metrics: StepMetrics) -> None:
    with (JobFolder(job_dir).metrics).open("a") as f:
        f.write(metrics.model_dump_json(exclude_none=True) + "\n")
    extras = "".join(
        f" {name.replace('_', ' ')} {value:.4f}"
        for name, value in metrics.model_dump(exclude_none=True).items()
        if name
        in (
            "reward_margin",
            "reward_accuracy",
            "validation_loss",
            "reward_mean",
            "kl",
            "validation_reward",
        )
    )
    if metrics.loss is None:  # a measurement only (GRPO's held-out reward before training)
        log.info("step %d%s", metrics.step, extras)
        return
    log.info(
        "step %d epoch %d loss %.4f lr %.2e%s",
        metrics.step,
        metrics.epoch,
        metrics.loss or 0.0,
        metrics.lr or 0.0,
        extras,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def install_cancel_handler() -> threading.Event:
    """SIGTERM (cancel, or the server stopping) sets the event; the loop checks it between
    micro-batches."""
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    return stop


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def keep_library_warnings_out() -> None:
    """A warning raised inside a library (transformers' and peft's deprecations, as peft reading
    `is_gradient_checkpointing`) is nothing the job's user can act on: it stays out of the job's
    log. A warning from llama-post's own code still shows, as do errors."""
    import warnings

    import llama_post
    import providers

    ours = [Path(str(package.__file__)).resolve().parent for package in (llama_post, providers)]
    show = warnings.showwarning

    def shown(message: Any, category: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        if any(Path(filename).resolve().is_relative_to(folder) for folder in ours):
            show(message, category, filename, *args, **kwargs)

    warnings.showwarning = shown
    from transformers.utils import logging as library_logging

    library_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # its logger, likewise


def run(main: Any, job_dir: Path) -> None:
    """A worker's entry: run the recipe; exit 3 when cancelled, 4 when out of memory, 5 on a
    non-finite loss."""
    import sys

    global _heartbeat
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 alone shows progress and logs steps
        _heartbeat = Heartbeat(JobFolder(job_dir).heartbeat)
    else:
        logging.getLogger().setLevel(logging.WARNING)
    keep_library_warnings_out()
    beat("loading")
    try:
        main(job_dir)
    except Cancelled:
        log.info("cancelled")
        sys.exit(EXIT_CANCELLED)
    except NonFinite as exc:
        log.error("%s", exc)
        sys.exit(EXIT_NONFINITE)
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        log.exception("out of memory")
        sys.exit(EXIT_OUT_OF_MEMORY)
