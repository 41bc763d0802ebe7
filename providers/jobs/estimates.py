"""The estimates: a job's work, memory, time and cost on this device, from its prepared rows
(`providers/training/estimate.py` counts them) and a calibration of its largest micro-batch
(run by the trainer's `calibrator`, cached per model, setting and batch shape under
`storage_dir/calibrations`); and the check at creation that a job fits the device and its own
limits."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time

from llama_post.apis.post_training import Calibration, TrainingEstimate, TrainingRequest
from llama_post.errors import InvalidRequestError
from providers.jobs.config import LocalJobsConfig
from providers.jobs.folder import JobSpec, Prepared
from providers.jobs.trainer import Trainer
from providers.training.data import steps_per_epoch
from providers.training.estimate import Shape, Work, available_memory, count
from providers.training.estimate import memory as estimate_memory
from providers.training.methods import method_of

log = logging.getLogger(__name__)


class Estimates:
    def __init__(self, config: LocalJobsConfig, trainer: Trainer) -> None:
        self.config = config
        self.trainer = trainer

    def estimate(self, prepared: Prepared, calibrate: bool) -> TrainingEstimate:
        """The job's work, memory, time and cost on this device (time and cost need a
        calibration: measured now, or found in the cache)."""
        spec = prepared.spec
        request = spec.request
        shape = Shape.read(spec.base_folder)
        plan = steps_per_epoch([row[0] for row in prepared.examples], request, spec.ranks)
        work = count(request, prepared.examples, plan, spec.low_memory, shape)
        memory = estimate_memory(shape, request, spec.dtype, work.largest, spec.low_memory)
        memory.available = self.config.memory_limit_bytes or available_memory(spec.device)
        calibration = self.calibration(spec, work, run=calibrate)
        wall = cost = None
        if calibration is not None:
            memory.peak = calibration.peak_memory
            every = request.training_config.save_every
            saves = 1 + (sum(plan) // every if every else 0)
            wall = (
                calibration.load_seconds
                + work.flops / calibration.flops_per_second
                + saves * calibration.save_seconds
                + sum(plan) * _sampling_seconds(request, calibration)
            )
            if self.config.price_per_device_hour is not None:
                cost = wall / 3600 * self.config.price_per_device_hour
        return TrainingEstimate(
            device=spec.device,
            dtype=spec.dtype,
            optimizer_steps=sum(plan),
            tokens=work.tokens,
            trained_tokens=work.trained,
            flops=work.flops,
            memory=memory,
            wall_seconds=wall,
            cost=cost,
            calibration=calibration,
        )

    def calibration(self, spec: JobSpec, work: Work, run: bool) -> Calibration | None:
        """The calibration of this model, setting and micro-batch shape: from the cache, or
        (with `run`) run now, a few micro-steps in a worker process of the trainer's."""
        folder = self.config.storage_dir / "calibrations"
        request = spec.request
        key = hashlib.sha256(
            json.dumps(
                {
                    "base": spec.base_folder,
                    "adapter": spec.adapter_folder,
                    "method": type(request).__name__,
                    "tuning": request.tuning.model_dump(mode="json"),
                    "optimizer": request.training_config.optimizer.optimizer_type,
                    "efficiency": request.training_config.efficiency_config
                    and request.training_config.efficiency_config.model_dump(mode="json"),
                    "device": spec.device,
                    "dtype": spec.dtype,
                    "threads": spec.torch_threads,
                    "low_memory": spec.low_memory,
                    "batch": [[len(e.input_ids) for e in row] for row in work.largest],
                    "sampled": request.training_config.gradient_accumulation_steps
                    if method_of(request).sampled is not None
                    else None,  # the rollout batch is the step's micro-batches' prompts
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:24]
        cached = folder / f"{key}.json"
        if cached.is_file():
            return Calibration.model_validate_json(cached.read_text()).model_copy(
                update={"cached": True}
            )
        scratch = folder / f"{key}.partial"
        command = self.trainer.calibrator(scratch)
        if command is None or not run:
            return None
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            (scratch / "job.json").write_text(spec.model_dump_json())
            (scratch / "batch.json").write_text(
                json.dumps(
                    [
                        [{"input_ids": e.input_ids, "labels": e.labels} for e in row]
                        for row in work.largest
                    ]
                )
            )
            launched = time.time()
            ran = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
            if ran.returncode != 0:
                tail = (ran.stderr or ran.stdout).strip().splitlines()[-1:]
                log.warning("calibration failed: %s", tail)
                raise InvalidRequestError(
                    f"the calibration run failed: {tail[0] if tail else ran.returncode}",
                    param="training_config",
                )
            measured = json.loads((scratch / "calibration.json").read_text())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        calibration = Calibration(
            seconds_per_micro_step=measured["seconds_per_micro_step"],
            flops_per_second=work.largest_flops / measured["seconds_per_micro_step"],
            load_seconds=measured["loaded_at"] - launched,  # the interpreter's start included
            save_seconds=measured["save_seconds"],
            peak_memory=measured["peak_memory"],
            rollout_prefill_seconds=(measured.get("rollouts") or [None])[0],
            rollout_decode_seconds=(measured.get("rollouts") or [None, None])[1],
            cached=False,
        )
        cached.write_text(calibration.model_dump_json())
        return calibration

    def check(self, prepared: Prepared) -> TrainingEstimate:
        """Refuse a job that will not fit the device, or whose estimate exceeds its limits."""
        request = prepared.spec.request
        limits = request.supervision
        calibrate = limits.max_wall_seconds is not None or limits.max_cost is not None
        figures = self.estimate(prepared, calibrate)
        memory = figures.memory
        if memory.available is not None and memory.peak > memory.available:
            raise InvalidRequestError(
                f"training_config: the job needs about {_gib(memory.peak)} at its peak "
                f"(weights {_gib(memory.weights)}, trained state {_gib(memory.trained_state)}, "
                f"activations {_gib(memory.activations)}, logits {_gib(memory.logits)}, runtime "
                f"{_gib(memory.runtime)}) and the device {figures.device} has "
                f"{_gib(memory.available)}; use LoRA, a smaller batch_size or max_seq_len, or "
                "activation checkpointing",
                param="training_config",
            )
        wall = figures.wall_seconds
        if (
            limits.max_wall_seconds is not None
            and wall is not None
            and wall > limits.max_wall_seconds
        ):
            raise InvalidRequestError(
                f"supervision.max_wall_seconds: the job is estimated to take "
                f"{figures.wall_seconds:.0f} s here ({figures.optimizer_steps} steps, "
                f"{figures.tokens} tokens, {figures.flops:.3g} FLOPs), more than "
                f"{limits.max_wall_seconds:g} s",
                param="supervision.max_wall_seconds",
            )
        cost = figures.cost
        if limits.max_cost is not None and cost is not None and cost > limits.max_cost:
            raise InvalidRequestError(
                f"supervision.max_cost: the job is estimated to cost {figures.cost:.4g} "
                f"({figures.wall_seconds:.0f} s at {self.config.price_per_device_hour:g} "
                f"an hour), more than {limits.max_cost:g}",
                param="supervision.max_cost",
            )
        return figures


def _sampling_seconds(request: TrainingRequest, calibration: Calibration) -> float:
    """A step's sampling, for a method that samples its answers: the rollout batch's prefill
    and `max_tokens` decode steps (every answer as long as it may be: an upper bound)."""
    method = method_of(request)
    prefill, decode = calibration.rollout_prefill_seconds, calibration.rollout_decode_seconds
    if method.sampled is None or prefill is None or decode is None:
        return 0.0
    return prefill + (method.sampled(request).max_tokens - 1) * decode


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
