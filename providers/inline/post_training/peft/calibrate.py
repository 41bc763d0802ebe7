"""A calibration: the job's largest micro-batch, run for a few timed micro-steps by the recipes'
own code on this device, and one checkpoint saved. It reports the seconds per micro-step, the
model's load and save times and the process's peak memory, from which the server's estimates
take their time and memory (`providers/training/estimate.py`). A method that samples its answers
(GRPO) has one step's rollout batch sampled too, by the recipe's engine: the prefill and the
seconds of each decode step after it.

Run by the server: `python -m providers.inline.post_training.peft.calibrate DIR`, where DIR
holds the job's `job.json` and `batch.json` (the micro-batch's rows of examples); it writes
`calibration.json` there.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from providers.inline.post_training.peft.loop import save
from providers.inline.post_training.peft.recipe_dpo import Pair, dpo_loss, pair_logps
from providers.inline.post_training.peft.recipe_sft import completion_loss
from providers.inline.post_training.peft.training import (
    clip,
    load_model,
    make_optimizer,
    make_scheduler,
    peak_memory,
)
from providers.jobs.folder import JobFolder, JobSpec
from providers.training.data import IGNORE, Example, collate, repack
from providers.training.methods import DPO, method_of

TIMED = 2  # micro-steps timed, after one not timed
DECODED = 4  # decode steps timed after the prefill, for a method that samples


def main(folder: Path) -> None:
    spec = JobFolder(folder).read_spec()
    request = spec.request
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    batch = [
        [Example(e["input_ids"], e["labels"], len(e["input_ids"])) for e in row]
        for row in json.loads((folder / "batch.json").read_text())
    ]
    tokenizer, model = load_model(spec)
    loaded_at = time.time()  # the server counts the load from when it started this process
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, request)
    scheduler = make_scheduler(optimizer, request, TIMED + 1)
    rollouts: tuple[float, float] | None = None
    method = method_of(request)
    if method.sampled is not None:  # the step's prompts: the batch's, times its micro-batches
        prompts = [e.input_ids[: e.labels.count(IGNORE)] for row in batch for e in row]
        rollouts = time_rollouts(
            model, tokenizer, spec, prompts * request.training_config.gradient_accumulation_steps
        )
    model.train()
    paired = method.pairs  # a row is (chosen, rejected): DPO's loss

    def micro_step() -> None:
        if paired:
            alignment = DPO.api.narrow(request).algorithm_config
            pairs = [Pair(row[0], row[1]) for row in batch]
            chosen, rejected, n_chosen, n_rejected = pair_logps(model, pairs, pad_id, spec.device)
            zeros = torch.zeros_like(chosen)
            losses, _, _ = dpo_loss(
                chosen,
                rejected,
                zeros,
                zeros,
                n_chosen,
                n_rejected,
                alignment.beta,
                alignment.loss_type,
            )
            loss = losses.sum()
        else:
            inputs = {k: v.to(spec.device) for k, v in collate(repack(batch), pad_id, True).items()}
            loss = completion_loss(model, inputs)
        torch.autograd.backward(loss)
        clip(params, request.training_config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    micro_step()  # allocations, kernel choices
    started = time.perf_counter()
    for _ in range(TIMED):
        micro_step()
    per_step = (time.perf_counter() - started) / TIMED
    started = time.perf_counter()
    save(
        folder / "checkpoint",
        model,
        tokenizer,
        optimizer,
        scheduler,
        request,
        1,
        (0, 1),
        {},
        final=False,
    )
    saved = time.perf_counter() - started
    peak = peak_memory(spec.device)
    (folder / "calibration.json").write_text(
        json.dumps(
            {
                "seconds_per_micro_step": per_step,
                "loaded_at": loaded_at,
                "save_seconds": saved,
                "peak_memory": peak,
                "rollouts": rollouts,
            }
        )
    )


def time_rollouts(
    model: Any, tokenizer: Any, spec: JobSpec, prompts: list[list[int]]
) -> tuple[float, float]:
    """Seconds to prefill `prompts` together and sample their first tokens, and each decode
    step after (no end of sequence, so every answer runs its length), with the recipe's
    engine."""
    from providers.inline.inference.transformers.engine import Engine
    from providers.inline.inference.transformers.sampling import SamplingParams

    engine = Engine(model, tokenizer, spec.device, len(prompts))
    model.eval()

    def sample(tokens: int) -> float:
        async def one(k: int, prompt: list[int]) -> None:
            async for _ in engine.generate(prompt, SamplingParams(tokens, seed=k), None):
                pass

        async def every() -> None:
            await asyncio.gather(*(one(k, p) for k, p in enumerate(prompts)))

        started = time.perf_counter()
        asyncio.run(every())
        return time.perf_counter() - started

    try:
        sample(1)  # allocations, kernel choices
        first = sample(1)
        longer = sample(1 + DECODED)
        # the difference of two timings is noise where decoding is cheap: then each step is
        # counted as an average step of the longer run (an upper bound, as the estimate is)
        decode = (longer - first) / DECODED
        return first, decode if decode > 0 else longer / (1 + DECODED)
    finally:
        engine.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
