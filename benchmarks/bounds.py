"""The bounds a benchmark's figures are held against, measured in the same run: the machine's
matrix-product peak in fp32 and in bf16 and its memory bandwidth; and the work one unit of a
benchmark needs (model FLOPs per trained token or pair, bytes of weights per decode step),
counted from the model's config and the tokens the benchmark runs.

Measured (torch's default thread count, after a warm-up, the best of a few timed runs):

- `matmul_peak(dtype)`: GFLOP/s of `a @ b` (2*m*k*n FLOPs) for a square 2048 product and two
  SmolLM2-shaped ones (2048x576 @ 576x1536, an MLP projection, and 2048x1536 @ 1536x576), the
  best of them: about a second per dtype.
- `memory_bandwidth()`: GB/s of a copy of a 256 MiB float32 tensor (8x the 32 MiB last-level
  cache of the 2-core development machine), counted as the bytes read plus the bytes written
  (not the write-allocate reads a CPU may add), and of a sum over it (bytes read); the better
  of the two: a fraction of a second.

Counted (a Llama-shaped decoder: per layer q, k, v, o projections and a gated MLP of three;
`Decoder.from_folder` reads hidden size, layers, heads, kv heads, head size, intermediate size,
vocabulary and tied embeddings from config.json). The count is model FLOPs, the work the method
needs, in multiply-adds x 2; work an implementation adds (padding, recomputation under
activation checkpointing, a head over unlabelled positions, a prompt run twice) is not counted,
so it shows as a lower fraction of the bound. Elementwise work (norms, rotary embeddings,
softmax, activations, the optimizer on LoRA's few weights) is not counted either: it is not
matrix products, and a few percent of the FLOPs at most.

Per token run through the decoder, with N = layers x (h*(q+k+v+o widths) + 3*h*intermediate)
the decoder's matrix-product weights:

- forward: 2N; backward, the base frozen (LoRA): 2N for the input gradients only (a frozen
  weight needs no weight gradient), less the first layer's q/k/v input gradients, which nothing
  needs (the embeddings are frozen);
- attention, per layer and head: a query at position t attends to t+1 keys (causal), each
  pair 2*head_dim FLOPs for the score and 2*head_dim for the value: 4*heads*head_dim*(t+1) per
  layer forward, so a sequence of length L costs 4*heads*head_dim*layers*L(L+1)/2, growing
  with its length (packed rows attend within each example); the backward pass is twice that
  (gradients of both operands of each product);
- LoRA, rank r on a projection d_in -> d_out: 2r(d_in + d_out) forward, twice that backward
  (input gradient, and the gradients of A and B);
- the output head, as llama-post runs it: on labelled positions only (the positions whose next
  token is trained), 2*h*vocab forward and 2*h*vocab for its input gradient (it is frozen).

LoRA SFT per example: all of the above. LoRA DPO per pair: the policy's forward and backward over
the chosen and the rejected sequences, their shared prompt counted once (it is the same
computation for both: causal attention), plus the reference's forward pass over the same tokens
(head on the answers' labelled positions, no LoRA: the reference is the base). `Work` also
carries the count with the prompt in both sequences, for comparison.

Decode: one step of a single request reads every weight once: the decoder's, the final norm,
and the output head (for a tied embedding, as SmolLM2's, the table is read once, as the head;
the embedding lookup reads one row). Bytes = those parameters x bytes per element; the bound in
steps/s is bandwidth / bytes. The KV cache read is not counted (at 150 positions SmolLM2's is
about 1.3% of its weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from providers.training.estimate import Shape

PEAK_SHAPES = ((2048, 2048, 2048), (2048, 576, 1536), (2048, 1536, 576))
BANDWIDTH_MIB = 256
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def matmul_peak(dtype: str, repeats: int = 5) -> float:
    """GFLOP/s: the best timed matrix product of `PEAK_SHAPES` in `dtype` ("fp32", "bf16", or
    torch's names)."""
    import torch

    kind = getattr(torch, DTYPES.get(dtype, dtype))
    best = 0.0
    for m, k, n in PEAK_SHAPES:
        a, b = torch.randn(m, k, dtype=kind), torch.randn(k, n, dtype=kind)
        for _ in range(2):
            a @ b
        seconds = min(_timed(lambda a=a, b=b: a @ b) for _ in range(repeats))
        best = max(best, 2 * m * k * n / seconds / 1e9)
    return best


def memory_bandwidth(repeats: int = 5) -> float:
    """GB/s: the better of a copy (bytes read + written) and a sum (bytes read) of a tensor far
    larger than the last-level cache."""
    import torch

    x = torch.ones(BANDWIDTH_MIB * 2**20 // 4)
    y = torch.empty_like(x)
    for _ in range(2):  # touch every page first
        y.copy_(x)
        x.sum()
    size = x.numel() * x.element_size()
    copy = min(_timed(lambda: y.copy_(x)) for _ in range(repeats))
    total = min(_timed(lambda: x.sum()) for _ in range(repeats))
    return max(2 * size / copy, size / total) / 1e9


def measure() -> dict[str, float]:
    """The machine's bounds now: fp32 and bf16 matmul GFLOP/s, memory GB/s."""
    return {
        "fp32_gflops": matmul_peak("fp32"),
        "bf16_gflops": matmul_peak("bf16"),
        "bandwidth_gbs": memory_bandwidth(),
    }


def best(*measured: dict[str, float]) -> dict[str, float]:
    """The highest of each figure over several measurements (before and after the runs): a
    busy moment on a shared machine lowers a peak, and a bound should not be low."""
    return {key: max(m[key] for m in measured) for key in measured[0]}


def describe(machine: dict[str, float]) -> str:
    fp32, bf16 = machine["fp32_gflops"], machine["bf16_gflops"]
    return (
        f"matmul peak: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s ({bf16 / fp32:.2f}x); "
        f"memory bandwidth {machine['bandwidth_gbs']:.1f} GB/s"
    )


def peak_flops(machine: dict[str, float], dtype: str) -> float:
    """FLOP/s of the dtype a run computed in ("fp32"/"float32" or "bf16"/"bfloat16")."""
    short = {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)
    return machine[f"{short}_gflops"] * 1e9


class Decoder(Shape):
    """The model's shape as llama-post's estimates read it (`providers.training.estimate`),
    with what these benchmarks count on top."""

    @classmethod
    def from_folder(cls, folder: Path | str) -> Decoder:
        shape = Shape.read(folder)
        return cls(**{f.name: getattr(shape, f.name) for f in fields(Shape)})

    @property
    def widths(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each projection of a layer."""
        return self.modules()

    @property
    def matmul_weights(self) -> int:
        """N: the decoder's matrix-product weights (all layers; not the embedding or head)."""
        return self.linear

    @property
    def parameters(self) -> int:
        """Every parameter, a tied embedding once (norms included; no biases)."""
        return self.params

    def decode_bytes(self, dtype: str) -> int:
        """Bytes of weights one decode step reads: the decoder, the final norm, the head (a
        tied table once, as the head) and the embedding row looked up."""
        read = self.matmul_weights + (2 * self.layers + 1) * self.hidden
        read += self.vocab * self.hidden + self.hidden  # the head; one embedding row
        return read * BYTES[DTYPES.get(dtype, dtype)]

    def lora_per_token(self, rank: int, modules: list[str]) -> int:
        """Forward FLOPs of LoRA's own products per token (all layers)."""
        return self.layers * sum(2 * rank * sum(self.widths[m]) for m in modules)

    def attention(self, query_key_pairs: int) -> int:
        """Forward FLOPs of the scores and the weighted values over all layers."""
        return 4 * self.heads * self.head_dim * self.layers * query_key_pairs


@dataclass
class Work:
    """What a unit of training runs through the decoder: tokens, causal (query, key) pairs and
    labelled positions (the output head's); and, for DPO, the same with the prompt twice."""

    tokens: int = 0
    pairs: int = 0
    labelled: int = 0
    tokens_twice: int = 0  # DPO: the prompt in both sequences
    pairs_twice: int = 0

    def lora_training(
        self, model: Decoder, rank: int, modules: list[str], twice: bool = False
    ) -> int:
        """FLOPs of a LoRA step's forward and backward passes over this work (base frozen)."""
        tokens = self.tokens_twice if twice else self.tokens
        pairs = self.pairs_twice if twice else self.pairs
        first_qkv = sum(
            a * b for m, (a, b) in model.widths.items() if m in ("q_proj", "k_proj", "v_proj")
        )
        forward = self.forward(model, twice)
        backward = 2 * model.matmul_weights * tokens - 2 * first_qkv * tokens
        backward += 2 * model.attention(pairs) + 2 * model.hidden * model.vocab * self.labelled
        lora = 3 * model.lora_per_token(rank, modules) * tokens
        return forward + backward + lora

    def forward(self, model: Decoder, twice: bool = False) -> int:
        """FLOPs of a forward pass of the base over this work (the head on labelled positions)."""
        tokens = self.tokens_twice if twice else self.tokens
        pairs = self.pairs_twice if twice else self.pairs
        return (
            2 * model.matmul_weights * tokens
            + model.attention(pairs)
            + 2 * model.hidden * model.vocab * self.labelled
        )


def causal(length: int) -> int:
    """(query, key) pairs of a causal sequence: position t attends to t + 1 keys."""
    return length * (length + 1) // 2


def sft_work(examples: list[Any]) -> Work:
    """The work of examples (`providers.training.data.Example`: input_ids, trained labels)."""
    work = Work()
    for e in examples:
        work.tokens += len(e.input_ids)
        work.pairs += causal(len(e.input_ids))
        work.labelled += e.trained
    return work


def dpo_work(pairs: list[Any]) -> Work:
    """The work of preference pairs (`recipe_dpo.Pair`: chosen, rejected, shared prompt)."""
    work = Work()
    for p in pairs:
        c, r, s = len(p.chosen.input_ids), len(p.rejected.input_ids), p.shared
        work.tokens += c + r - s
        work.pairs += causal(c) + causal(r) - causal(s)  # the rejected answer sees the prompt
        work.labelled += p.chosen.trained + p.rejected.trained
        work.tokens_twice += c + r
        work.pairs_twice += causal(c) + causal(r)
    return work


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
