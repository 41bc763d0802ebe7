"""Direct preference optimization, LoRA or full, as one recipe: setup, the reference, the step,
the save.

Run by a worker process: `python -m providers.inline.post_training.peft.recipe_dpo JOB_DIR`.
The reference model is the model the job starts from. Its log-probabilities of every pair the
job will see are computed once, before the first step, and kept in the job folder: so no
second copy of the weights exists (LoRA or full), no pair is scored by the reference twice,
and a resumed job reads them back. Resume, cancel and checkpoints work as in `recipe_sft`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llama_post.apis.post_training import DPOLossType, PreferenceOptimizeRequest, StepMetrics
from providers.inline.post_training.peft.loop import (
    Loop,
    last_validation_loss,
    resume,
    start_worker,
)
from providers.inline.post_training.peft.training import (
    beat,
    decoder_states,
    head_logps,
    injected_fault,
    load_model,
    pad_id,
    record,
    run,
)
from providers.jobs.folder import JobFolder, read_jsonl, write_json_atomic
from providers.training import distributed
from providers.training.data import (
    IGNORE,
    Example,
    epoch_order,
    first_fit,
    render_pair,
    steps_per_epoch,
)

log = logging.getLogger("recipe_dpo")


@dataclass
class Pair:
    chosen: Example
    rejected: Example

    @property
    def shared(self) -> int:
        """How many leading (prompt) tokens the two sequences share: scored once."""
        chosen, rejected = self.chosen, self.rejected
        limit = min(_first_trained(chosen), _first_trained(rejected))
        n = 0
        while n < limit and chosen.input_ids[n] == rejected.input_ids[n]:
            n += 1
        return n

    @property
    def width(self) -> int:
        """Positions the pair takes in a row: the prompt once, then both answers."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids) - self.shared


def _first_trained(example: Example) -> int:
    return next(
        (k for k in range(1, len(example.labels)) if example.labels[k] != IGNORE),
        len(example.labels),
    )


def main(job_dir: Path) -> None:
    # -- setup ---------------------------------------------------------------------------------
    folder = JobFolder(job_dir)
    spec = folder.read_spec()
    request = spec.request
    assert isinstance(request, PreferenceOptimizeRequest)
    cfg, data_cfg = request.training_config, request.training_config.data
    beta, loss_type = request.algorithm_config.beta, request.algorithm_config.loss_type
    stop, ranks = start_worker(spec)
    tokenizer, model = load_model(spec, whole_fp32=ranks.sharded)
    pad = pad_id(tokenizer)
    train = _pairs(folder.train, tokenizer, data_cfg.max_seq_len)
    validation = _pairs(folder.validation, tokenizer, data_cfg.max_seq_len)
    plan = steps_per_epoch([p.chosen for p in train], request, ranks.world)
    log.info(
        "DPO %s (%s, beta %g): %d pairs, %d validation pairs, %d steps, %s parameters trained",
        spec.job_uuid,
        loss_type.value,
        beta,
        len(train),
        len(validation),
        sum(plan),
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
    )
    used = _used(len(train), request, plan, ranks.world)
    reference = _reference(job_dir, model, train, validation, used, pad, spec.device, ranks.leader)
    loop = resume(job_dir, spec, model, tokenizer, plan, ranks, stop)
    model = loop.model

    # -- the loop ------------------------------------------------------------------------------
    model.train()
    ga = cfg.gradient_accumulation_steps * ranks.world  # micro-batches of a step, in all
    last: dict[str, float | None] = {"train_loss": None}
    for epoch in loop.epochs():
        order = epoch_order(len(train), cfg.seed, epoch, data_cfg.shuffle)
        size = data_cfg.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        for step_in_epoch in loop.steps():
            started = time.perf_counter()
            step_batches = batches[step_in_epoch * ga : (step_in_epoch + 1) * ga]
            mean, tokens = _backward(loop, request, train, reference["train"], step_batches, pad)
            grad_norm, lr = loop.update(mean["loss"])
            loop.advance()
            margin = mean["chosen"] - mean["rejected"]
            last = {
                "train_loss": mean["loss"],
                "reward_margin": margin,
                "reward_accuracy": mean["accuracy"],
            }
            held_out: dict[str, float] = {}
            if loop.epoch_done and validation:
                held_out = _validate(
                    model, validation, reference["validation"], request, pad, spec.device
                )
                last |= {"validation_loss": held_out["loss"]}
            if loop.logs(measured=bool(held_out)):
                record(
                    job_dir,
                    StepMetrics(
                        step=loop.step,
                        epoch=epoch,
                        loss=mean["loss"],
                        lr=lr,
                        grad_norm=grad_norm,
                        tokens_per_second=tokens / (elapsed := time.perf_counter() - started),
                        tokens=tokens,
                        step_seconds=elapsed,
                        rewards_chosen=mean["chosen"],
                        rewards_rejected=mean["rejected"],
                        reward_margin=margin,
                        reward_accuracy=mean["accuracy"],
                        validation_loss=held_out.get("loss"),
                        validation_reward_margin=held_out.get("margin"),
                        validation_reward_accuracy=held_out.get("accuracy"),
                        timestamp=time.time(),
                    ),
                )
            loop.end_step({"validation_loss": None, **last})

    # -- the save ------------------------------------------------------------------------------
    loop.finish({**last, "validation_loss": last_validation_loss(job_dir)})


def _backward(
    loop: Loop,
    request: PreferenceOptimizeRequest,
    train: list[Pair],
    reference: torch.Tensor,
    step_batches: list[list[int]],
    pad: int,
) -> tuple[dict[str, float], int]:
    """A step's forward and backward passes over this rank's micro-batches (pair indices), the
    gradients averaged across ranks. Returns the step's mean loss, chosen and rejected rewards
    and accuracy over all its pairs, and the tokens it ran."""
    beta, loss_type = request.algorithm_config.beta, request.algorithm_config.loss_type
    ranks = loop.ranks
    n_pairs = sum(len(b) for b in step_batches)
    totals = dict.fromkeys(("loss", "chosen", "rejected", "accuracy"), 0.0)
    tokens = 0
    for m, indices in enumerate(distributed.micro_batches(step_batches, ranks)):
        loop.micro_batch(m)
        pairs = [train[i] for i in indices]
        chosen, rejected, n_chosen, n_rejected = pair_logps(
            loop.model, pairs, pad, loop.spec.device
        )
        ref = reference[indices]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref[:, 0], ref[:, 1], n_chosen, n_rejected, beta, loss_type
        )
        losses = injected_fault(losses, loop.step + 1)
        torch.autograd.backward(losses.sum() / n_pairs * distributed.loss_scale(ranks))
        totals["loss"] += float(losses.detach().sum())
        totals["chosen"] += float(chosen_rewards.sum())
        totals["rejected"] += float(rejected_rewards.sum())
        totals["accuracy"] += float((chosen_rewards > rejected_rewards).float().sum())
        tokens += sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
    distributed.average_grads(loop.params, ranks)
    totals = {k: distributed.total(v, ranks) for k, v in totals.items()}
    return {k: v / n_pairs for k, v in totals.items()}, int(distributed.total(tokens, ranks))


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    n_chosen: torch.Tensor,
    n_rejected: torch.Tensor,
    beta: float,
    loss_type: DPOLossType,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, and the chosen and rejected rewards, from summed answer log-probs.

    sigmoid: -log sigmoid(beta * margin) (DPO); hinge: max(0, 1 - beta * margin) (SLiC);
    ipo: (margin of per-token averages - 1 / (2 beta))^2 (IPO). The margin is the policy's
    chosen-minus-rejected log-ratio against the reference. Rewards are beta * log-ratio.
    """
    chosen_ratio = chosen - ref_chosen
    rejected_ratio = rejected - ref_rejected
    if loss_type == DPOLossType.sigmoid:
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == DPOLossType.hinge:
        losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    else:
        margin = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
        losses = (margin - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_logps(
    model: Any, pairs: list[Pair], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed answer log-probs of the chosen and of the rejected answers, and their token
    counts, from one forward pass.

    Each pair is laid out once as [prompt, chosen answer, rejected answer]: both answers attend
    to the one copy of the prompt and to themselves, never to each other (a 4-D mask), and the
    rejected answer's positions restart where the prompt ends. So the prompt, often most of a
    pair's tokens, is computed once instead of twice; each answer token's log-prob is read off
    the state before it (the prompt's last token for an answer's first). Pairs are packed into
    the fewest rows that fit the widest pair; padding attends only to itself.
    """
    n = len(pairs)
    rows = first_fit(list(range(n)), lambda i: pairs[i].width, max(p.width for p in pairs))
    width = max(sum(pairs[i].width for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1, 1)
    where: list[tuple[int, int]] = []  # (row, column) of the state that predicts each token
    labels: list[int] = []
    owner: list[int] = []  # the sequence each token belongs to: i chosen, n + i rejected
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            pair = pairs[i]
            shared = pair.shared
            chosen, rejected = pair.chosen.input_ids, pair.rejected.input_ids
            answer_starts = (offset + shared, offset + len(chosen))
            ids[r, offset : offset + len(chosen)] = torch.tensor(chosen)
            ids[r, answer_starts[1] : offset + pair.width] = torch.tensor(rejected[shared:])
            positions[r, offset : offset + len(chosen)] = torch.arange(len(chosen))
            positions[r, answer_starts[1] : offset + pair.width] = torch.arange(
                shared, len(rejected)
            )
            block = torch.ones(pair.width, pair.width, dtype=torch.bool).tril()
            block[len(chosen) :, shared : len(chosen)] = False  # rejected never sees chosen
            mask[r, 0, offset : offset + pair.width, offset : offset + pair.width] = block
            for seq, example, start in (
                (i, pair.chosen, answer_starts[0]),
                (n + i, pair.rejected, answer_starts[1]),
            ):
                for k in range(1, len(example.labels)):
                    if example.labels[k] == IGNORE:
                        continue
                    before = k - 1
                    column = offset + before if before < shared else start + before - shared
                    where.append((r, column))
                    labels.append(example.labels[k])
                    owner.append(seq)
            offset += pair.width
    hidden = decoder_states(
        model,
        {
            "input_ids": ids.to(device),
            "position_ids": positions.to(device),
            "attention_mask": mask.to(device),
        },
    )
    at = torch.tensor(where, dtype=torch.long, device=device).reshape(-1, 2)
    logps = head_logps(model, hidden[at[:, 0], at[:, 1]], torch.tensor(labels, device=device))
    owners = torch.tensor(owner, dtype=torch.long, device=device)
    sums = torch.zeros(2 * n, dtype=logps.dtype, device=logps.device).index_add(0, owners, logps)
    counts = torch.bincount(owners, minlength=2 * n).to(logps.dtype)
    return sums[:n], sums[n:], counts[:n], counts[n:]


def _pairs(path: Path, tokenizer: Any, max_seq_len: int) -> list[Pair]:
    return [Pair(*render_pair(row, tokenizer, max_seq_len)) for row in read_jsonl(path)]


def _used(count: int, request: PreferenceOptimizeRequest, plan: list[int], ranks: int) -> set[int]:
    """The training pairs the job's steps will see (all of them, unless steps are capped)."""
    cfg = request.training_config
    per_step = cfg.data.batch_size * cfg.gradient_accumulation_steps * ranks
    used: set[int] = set()
    for epoch, steps in enumerate(plan):
        order = epoch_order(count, cfg.seed, epoch, cfg.data.shuffle)
        used.update(order[: steps * per_step])
    return used


@torch.no_grad()
def _reference(
    job_dir: Path,
    model: Any,
    train: list[Pair],
    validation: list[Pair],
    used: set[int],
    pad_id: int,
    device: str,
    keep: bool,
) -> dict[str, torch.Tensor]:
    """The starting model's (chosen, rejected) log-probs of each pair, computed once and kept
    in `reference.json` (by rank 0: `keep`); pairs the job never sees are left out (NaN)."""
    path = job_dir / "reference.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return {
            k: torch.tensor(saved[k], dtype=torch.float32, device=device).reshape(-1, 2)
            for k in ("train", "validation")
        }
    started = time.perf_counter()
    model.eval()
    out: dict[str, torch.Tensor] = {}
    for name, pairs, wanted in (
        ("train", train, sorted(used)),
        ("validation", validation, list(range(len(validation)))),
    ):
        values = torch.full((len(pairs), 2), float("nan"))
        for start in range(0, len(wanted), REFERENCE_BATCH):
            beat("reference", None, start)
            indices = wanted[start : start + REFERENCE_BATCH]
            chosen, rejected, _, _ = pair_logps(model, [pairs[i] for i in indices], pad_id, device)
            values[indices, 0] = chosen.float().cpu()
            values[indices, 1] = rejected.float().cpu()
        out[name] = values.to(device)
    model.train()
    seconds = time.perf_counter() - started
    if keep:
        saved = {"seconds": seconds, **{k: v.cpu().tolist() for k, v in out.items()}}
        write_json_atomic(path, saved)
    log.info(
        "reference log-probs of %d pairs computed in %.1f s", len(used) + len(validation), seconds
    )
    return out


REFERENCE_BATCH = 8  # pairs per reference forward pass


@torch.no_grad()
def _validate(
    model: Any,
    pairs: list[Pair],
    reference: torch.Tensor,
    request: PreferenceOptimizeRequest,
    pad_id: int,
    device: str,
) -> dict[str, float]:
    """Mean loss, reward margin and preference accuracy on the held-out pairs."""
    batch = request.training_config.data.batch_size
    limit = request.training_config.max_validation_steps
    starts = list(range(0, len(pairs), batch))[:limit]
    beat("validating")
    model.eval()
    loss = margin = accuracy = 0.0
    seen = 0
    for start in starts:
        indices = list(range(start, min(start + batch, len(pairs))))
        chosen, rejected, n_chosen, n_rejected = pair_logps(
            model, [pairs[i] for i in indices], pad_id, device
        )
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen,
            rejected,
            reference[indices, 0],
            reference[indices, 1],
            n_chosen,
            n_rejected,
            request.algorithm_config.beta,
            request.algorithm_config.loss_type,
        )
        loss += float(losses.sum())
        margin += float((chosen_rewards - rejected_rewards).sum())
        accuracy += float((chosen_rewards > rejected_rewards).float().sum())
        seen += len(indices)
    model.train()
    seen = max(1, seen)
    return {"loss": loss / seen, "margin": margin / seen, "accuracy": accuracy / seen}


if __name__ == "__main__":
    run(main, Path(sys.argv[1]))
