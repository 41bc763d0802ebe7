"""Estimates before launch: a job's work counted from the model's architecture and the batches
it will run, its peak memory part by part, and its time from a calibration on this device.

FLOPs (a multiply-add is 2), for a sequence of L tokens of which `trained` are labelled, with N
the decoder's linear parameters, h the hidden size, V the vocabulary, per layer H heads of size
d, and A = 4 H d L(L+1)/2 the causal attention products of the layers (scores and values):

- forward: 2 N L + A, plus LoRA's own 2 r (in + out) per adapted module and token;
- backward: the input gradients, 2 N L + 2 A; full fine-tuning adds the weight gradients 2 N L;
  LoRA's small terms twice more;
- output head, run on labelled positions only: a frozen head (LoRA) 4 h V per labelled token
  (the logits, and the input gradient taken while they exist); a trained head 8 h V (forward,
  recomputed, and two backward products);
- activation checkpointing recomputes the forward of the checkpointed layers;
- a method's reference pass (DPO's, `reference_pass`), once per row the job will see: a
  forward pass;
- a method that samples its answers (GRPO's, `sampled`): each prompt as `answers` sequences of
  the prompt and `max_tokens` answer tokens (every answer as long as it may be: an upper bound),
  trained on `updates` times, with `scoring_passes` forward passes more. Sampling them is timed
  apart (decoding is not bound by FLOPs): per step, the calibration's prefill of the step's
  rollout batch and `max_tokens` decode steps of it.

Memory: the weights (bf16 or fp32 as the job holds them), what training adds per trained
parameter (an fp32 copy where the weights are not fp32, its gradient, AdamW's two moments), the
largest micro-batch's activations under the job's checkpointing, a chunk of logits, and the
runtime. The calibration measures the peak of the real thing on the largest micro-batch, which
replaces the sum where it ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llama_post.apis.post_training import (
    EfficiencyConfig,
    LoraFinetuningConfig,
    TrainingRequest,
)
from llama_post.apis.post_training.jobs import MemoryEstimate
from providers.training.data import Example, epoch_order, group
from providers.training.methods import method_of
from providers.training.preflight import lora_targets

RUNTIME_BYTES = 450 * 2**20  # python, torch, transformers and peft, loaded (measured on CPU)
LOSS_CHUNK = 1024  # labelled positions whose logits exist at once (the recipes' chunk)


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def read(cls, folder: str | Path) -> Shape:
        config = json.loads((Path(folder) / "config.json").read_text())
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            hidden=hidden,
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    def modules(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of a decoder layer."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear(self) -> int:
        """The decoder's linear parameters (the head and embeddings left out)."""
        return self.layers * sum(a * b for a, b in self.modules().values())

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear + embeddings + norms


def lora_params(shape: Shape, request: TrainingRequest) -> int:
    algo = request.tuning
    if not isinstance(algo, LoraFinetuningConfig):
        return 0
    modules = shape.modules()
    total = 0
    for target in lora_targets(algo, modules):
        if target == "lm_head":
            total += algo.rank * (shape.hidden + shape.vocab)
        elif target in modules:
            total += shape.layers * algo.rank * sum(modules[target])
    return total


def checkpointed(request: TrainingRequest, low_memory: bool = False) -> float:
    """The fraction of decoder layers whose activations are recomputed."""
    efficiency = request.training_config.efficiency_config or EfficiencyConfig()
    if low_memory:
        return 1.0
    if not efficiency.enable_activation_checkpointing:
        return 0.0
    return 1.0 / efficiency.activation_checkpointing_every_n_layers


def flops(
    shape: Shape,
    request: TrainingRequest,
    lengths: list[int],
    trained: int,
    recompute: float,
    forward_only: bool = False,
) -> float:
    """Model FLOPs of one pass over examples of these lengths (see the module's docstring)."""
    tokens = sum(lengths)
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    adapter = lora_params(shape, request)
    attention = sum(
        4 * shape.layers * shape.heads * shape.head_dim * n * (n + 1) / 2 for n in lengths
    )
    forward = 2 * shape.linear * tokens + attention + 2 * adapter * tokens
    head = 2 * shape.hidden * shape.vocab * trained
    if forward_only:
        return forward + head
    backward = (2 if lora else 4) * shape.linear * tokens + 2 * attention + 4 * adapter * tokens
    head *= 2 if lora else 4
    return forward + backward + head + recompute * forward


@dataclass
class Work:
    steps: int
    tokens: int
    trained: int
    flops: float
    largest: list[list[Example]]  # the micro-batch with the most tokens, as rows of examples
    largest_flops: float


def count(
    request: TrainingRequest,
    per_row: list[list[Example]],
    plan: list[int],
    low_memory: bool,
    shape: Shape,
) -> Work:
    """Every micro-batch the job will run, as the recipes group them."""
    cfg = request.training_config
    data = cfg.data
    method = method_of(request)
    sampled = method.sampled(request) if method.sampled is not None else None
    recompute = checkpointed(request, low_memory)
    ga = cfg.gradient_accumulation_steps
    total_tokens = total_trained = 0
    total_flops = 0.0
    largest: list[list[Example]] = []
    largest_flops = 0.0
    seen: set[int] = set()
    for epoch, steps in enumerate(plan):
        order = epoch_order(len(per_row), cfg.seed, epoch, data.shuffle)
        seen.update(order[: steps * ga * data.batch_size])
        if method.pairs:
            batches = [  # a row is a pair: (chosen, rejected)
                [per_row[i] for i in order[k : k + data.batch_size]]
                for k in range(0, len(order), data.batch_size)
            ]
        else:
            examples = [row[0] for row in per_row]
            batches = group(examples, order, data.batch_size, data.packed, data.max_seq_len)
        for batch in batches[: steps * ga]:
            if sampled is not None:  # each prompt's answers, as long as they may be
                batch = [row for row in batch for _ in range(sampled.answers)]
            lengths = [len(e.input_ids) for row in batch for e in row]
            trained = sum(e.trained for row in batch for e in row)
            work = flops(shape, request, lengths, trained, recompute)  # one pass, as calibrated
            total_tokens += sum(lengths)
            total_trained += trained
            if sampled is None:
                total_flops += work
            else:
                scoring = flops(shape, request, lengths, trained, 0.0, forward_only=True)
                total_flops += work * sampled.updates + scoring * sampled.scoring_passes
            if work > largest_flops:
                largest, largest_flops = batch, work
    if method.reference_pass:  # once per row the job will see
        for i in seen:
            lengths = [len(e.input_ids) for e in per_row[i]]
            trained = sum(e.trained for e in per_row[i])
            total_flops += flops(shape, request, lengths, trained, 0.0, forward_only=True)
    return Work(sum(plan), total_tokens, total_trained, total_flops, largest, largest_flops)


def memory(
    shape: Shape,
    request: TrainingRequest,
    precision: str,
    largest: list[list[Example]],
    low_memory: bool,
) -> MemoryEstimate:
    """Peak memory, part by part (see the module's docstring)."""
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    optimizer = request.training_config.optimizer.optimizer_type
    moments = 0 if optimizer == "sgd" else 8
    held = 2 if precision == "bf16" and lora else 4  # full fine-tuning keeps fp32 masters
    compute = 2 if precision == "bf16" else 4
    trained = lora_params(shape, request) if lora else shape.params
    tokens = sum(len(e.input_ids) for row in largest for e in row)
    labelled = sum(e.trained for row in largest for e in row)
    recompute = checkpointed(request, low_memory)
    # per token and layer: the layer's input, the attention's q/k/v/out, the MLP's gate/up/act
    per_layer = compute * (
        6 * shape.hidden + 3 * shape.intermediate + 2 * shape.heads * shape.head_dim
    )
    kept_layers = shape.layers * (1 - recompute) + (1 if recompute else 0)
    boundaries = shape.layers * recompute * compute * shape.hidden
    activations = int(tokens * (per_layer * kept_layers + boundaries + 4 * shape.hidden))
    logits = int(3 * 4 * min(labelled, LOSS_CHUNK) * shape.vocab)
    parts = {
        "weights": shape.params * held,
        "trained_state": trained * (4 + moments + (4 if lora else 0)),  # grad, moments, fp32
        "activations": activations,
        "logits": logits,
        "runtime": RUNTIME_BYTES,
    }
    return MemoryEstimate(**parts, peak=sum(parts.values()))


def available_memory(device: str) -> int | None:
    """What the device has for a job: CUDA's free memory, or the machine's available RAM
    (under a cgroup's limit where there is one)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None
