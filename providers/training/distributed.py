"""A recipe's ranks, when a launcher starts several (torchrun, or torchrun inside a Ray job).

Each rank reads its place from the environment torchrun sets (`WORLD_SIZE`, `RANK`,
`LOCAL_RANK`) and joins the process group: gloo on CPU, NCCL on CUDA. Every rank renders the
same batches in the same order; a step's `ga x world` micro-batches are dealt out in contiguous
runs of `ga` (rank r takes the r-th), its loss is normalised by the trained tokens of the whole
step, and gradients are averaged across ranks (so each rank's loss is scaled by the world
size): the update is the one a single process makes with `ga x world` micro-batches.

Sharding: `none` keeps the whole model on every rank and averages its gradients once per
optimizer step (what DDP does under `no_sync` until the last micro-batch); `fsdp` shards each
decoder layer, and the decoder's own parameters but the (possibly tied) input embedding, with
FSDP2's `fully_shard`, which reduce-scatters their gradients in the backward pass; what stays
whole (the embedding, the output head) has its gradients averaged like `none`.

Rank 0 alone writes checkpoints, metrics, progress, the heartbeat and the log; a checkpoint's
sharded state is gathered to it (`get_model_state_dict(full_state_dict=True, cpu_offload=True)`),
a collective every rank takes part in.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("recipe")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    sharding: str = "none"

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        return self.many and self.sharding == "fsdp"


def join(device: str, sharding: str) -> Ranks:
    """This process's rank, the process group joined where torchrun started it (even as its
    only rank, so a one-GPU node runs NCCL as a bigger one does)."""
    if "WORLD_SIZE" not in os.environ:
        return Ranks()
    import torch.distributed as dist

    _die_with_parent()  # torchrun is the parent: a rank never outlives it
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    ranks = Ranks(rank=dist.get_rank(), world=dist.get_world_size(), sharding=sharding)
    if ranks.leader:
        log.info("%d rank(s), backend %s, sharding %s", ranks.world, backend, sharding)
    return ranks


def leave(ranks: Ranks) -> None:
    if torch.distributed.is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def shard(model: Any, ranks: Ranks, bf16: bool) -> Any:
    """FSDP2 over the decoder's layers and the decoder (its input embedding left whole, as the
    output head may share it); the model is returned as it was otherwise."""
    if not ranks.many:
        return model
    if not ranks.sharded:
        for param in model.parameters():  # every rank starts from rank 0's weights
            if param.requires_grad:
                torch.distributed.broadcast(param.data, src=0)
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
    )
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal_lm.get_decoder()
    for layer in decoder.layers:
        fully_shard(layer, mp_policy=policy)
    embedding = set(decoder.get_input_embeddings().parameters())
    fully_shard(decoder, mp_policy=policy, ignored_params=embedding)
    return model


def micro_batches(step_batches: list[Any], ranks: Ranks) -> list[Any]:
    """This rank's share of a step's micro-batches: the r-th run of len / world."""
    per_rank = len(step_batches) // ranks.world
    return step_batches[ranks.rank * per_rank : (ranks.rank + 1) * per_rank]


def loss_scale(ranks: Ranks) -> float:
    """Gradients are averaged across ranks; scaling each rank's loss by the world size makes
    the average the sum a single process computes."""
    return float(ranks.world)


def agree(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when it is true on any (a cancel seen by one rank stops them all at
    the same micro-batch, so none waits in a collective for a rank that left)."""
    if not ranks.many:
        return flag
    seen = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
    return bool(seen.item() > 0)


def total(value: float, ranks: Ranks) -> float:
    """A float summed over the ranks."""
    if not ranks.many:
        return value
    summed = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(summed)
    return float(summed.item())


def average_grads(params: list[Any], ranks: Ranks) -> None:
    """Average the gradients FSDP does not reduce (all of them without sharding), in one
    flattened all-reduce per dtype."""
    if not ranks.many:
        return
    from torch.distributed.tensor import DTensor

    whole = [p for p in params if not isinstance(p, DTensor)]
    for p in whole:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[Any]] = {}
    for p in whole:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        torch.distributed.all_reduce(flat)
        flat /= ranks.world
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def clip(params: list[Any], max_norm: float | None, ranks: Ranks) -> float:
    """The gradients' global norm (over every rank's shards), clipped to `max_norm`."""
    if not ranks.sharded:
        whole_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        return float(whole_norm)
    from torch.distributed.tensor import DTensor

    sharded = torch.zeros((), dtype=torch.float64, device=_device_of(params))
    whole = torch.zeros((), dtype=torch.float64, device=_device_of(params))
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            sharded += p.grad.to_local().double().pow(2).sum()
        else:
            whole += p.grad.double().pow(2).sum()
    torch.distributed.all_reduce(sharded)
    norm = math.sqrt(float((sharded + whole).item()))
    if max_norm and norm > max_norm:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(max_norm / (norm + 1e-6))
    return norm


def model_state(model: Any, ranks: Ranks, trained_only: bool) -> dict[str, Any] | None:
    """The model's state for a checkpoint, whole, on rank 0 (None elsewhere); None when the
    model is not sharded (it saves its own)."""
    if not ranks.sharded:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trained_only
    )
    return get_model_state_dict(model, options=options)


def optimizer_state(model: Any, optimizer: Any, ranks: Ranks) -> dict[str, Any]:
    """The optimizer's state, whole (keyed by parameter names where sharded)."""
    if not ranks.sharded:
        state: dict[str, Any] = optimizer.state_dict()
        return state
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any], ranks: Ranks) -> None:
    if not ranks.sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `obj`, in rank order (each rank's RNG state, for a checkpoint)."""
    if not ranks.many:
        return [obj]
    found: list[Any] = [None] * ranks.world
    torch.distributed.all_gather_object(found, obj)
    return found


def barrier(ranks: Ranks) -> None:
    if ranks.many:
        torch.distributed.barrier()


def _device_of(params: list[Any]) -> torch.device:
    for p in params:
        local = p.to_local() if hasattr(p, "to_local") else p
        return torch.device(local.device)
    return torch.device("cpu")


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
