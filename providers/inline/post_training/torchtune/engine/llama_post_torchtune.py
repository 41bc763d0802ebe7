"""The worker side of `inline::torchtune`: runs in torchtune's own environment (built by
`make engine-torchtune`), where llama-post is not installed, so it imports only the standard
library, torch and torchtune. The server talks to it through the job's folder alone.

`python llama_post_torchtune.py JOB_DIR` reads the recipe config the server generated
(`torchtune.json`), resumes from the newest checkpoint when there is one (torchtune saves its
state at epoch ends only, so a job cut off mid-epoch repeats that epoch's steps), writes
`torchtune.yaml` and replaces itself with `tune run <recipe> --config torchtune.yaml`.

The config names the components below by `llama_post_torchtune.<name>` (this folder is put on
the recipe's PYTHONPATH):

- `dataset`: the rows the server already tokenized with llama-post's own data code, so both
  trainers see identical tokens and masks; `tokenizer` only carries the pad id the collators use;
- `optimizer` and `lr_scheduler`: the request's optimizer (with gradient clipping where the
  recipe has none) and llama-post's warm-up and decay;
- `MetricLogger`: each logged step into `metrics.jsonl` and `progress.json`, in llama-post's
  names, and a line in the log;
- `checkpointer`: torchtune's Hugging Face checkpointer, which after each epoch also publishes
  the adapter (PEFT files only, never torchtune's merged weights), or a full fine-tune's whole
  model (a Hugging Face folder), as the shared job machinery's `step-NNNNNN` checkpoint, with
  the recipe state that resumes it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ENGINE_DIR = Path(__file__).resolve().parent
CHECKPOINT_PREFIX = "step-"  # as providers/jobs/folder.py spells them
EXIT_NONFINITE = 5  # and numbers this exit
LAST: dict[str, float] = {}  # the newest logged figures, for the checkpoint's record


# -- launching ----------------------------------------------------------------------------------


def main(job_dir: Path) -> None:
    _beat(job_dir, "loading", None)
    plan = json.loads((job_dir / "torchtune.json").read_text())
    config: dict[str, Any] = plan["config"]
    publish = Path(config["checkpointer"]["publish_dir"])
    found = _checkpoints(publish)
    start_step = 0
    if found:
        step, folder = found[-1]
        meta = json.loads((folder / "checkpoint.json").read_text())
        if meta.get("final"):
            print(f"the final checkpoint {folder.name} is already written; nothing to run")
            return
        start_step = step
        done = meta["epoch"] + 1
        print(
            f"resuming from {folder.name}, the end of epoch {done - 1}: torchtune saves its state "
            f"at epoch ends only, so epoch {done} starts again from its first step",
            flush=True,
        )
        config["resume_from_checkpoint"] = True
        if plan.get("full"):  # the epoch's whole model, in Hugging Face's format
            config["checkpointer"]["checkpoint_dir"] = str(folder)
            config["checkpointer"]["checkpoint_files"] = sorted(
                p.name for p in folder.glob("*.safetensors")
            )
        else:
            config["checkpointer"]["adapter_checkpoint"] = str(folder / "adapter_model.pt")
        config["checkpointer"]["recipe_checkpoint"] = str(folder / "recipe_state.pt")
    _truncate_metrics(job_dir / "metrics.jsonl", start_step)
    # torchtune 0.6.1 restores its step count on resume only when max_steps_per_epoch cuts the
    # epoch short; the logger adds what it leaves out
    batches = plan["rows"] // config["batch_size"] // config["gradient_accumulation_steps"]
    restored = config["max_steps_per_epoch"] < batches
    config["metric_logger"]["step_offset"] = 0 if restored else start_step
    config["lr_scheduler"]["start_step"] = start_step
    path = job_dir / "torchtune.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE_DIR), *_pythonpath()])}
    if plan.get("torch_threads"):
        env["OMP_NUM_THREADS"] = str(plan["torch_threads"])
    env["PYTHONWARNINGS"] = "ignore"  # the libraries' deprecations: nothing a user can act on
    tune = str(Path(sys.executable).with_name("tune"))
    sys.stdout.flush()
    os.execve(tune, [tune, "run", plan["recipe"], "--config", str(path)], env)


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(CHECKPOINT_PREFIX) and (child / "checkpoint.json").is_file():
                found.append((int(child.name[len(CHECKPOINT_PREFIX) :]), child))
    return sorted(found)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the metric lines of steps after `step` (they are run again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError):
            break  # a line cut off by a kill
    path.write_text("".join(kept))


def _beat(job_dir: Path, phase: str, step: int | None, slowest: float | None = None) -> None:
    """The worker's heartbeat for the server's stall watchdog (llama-post's `Heartbeat`: its
    own clock, its pid, which `tune run` keeps, replacing this process; the slowest step, which
    sets the watchdog's window in training)."""
    beat = {
        "time": time.time(),
        "pid": os.getpid(),
        "phase": phase,
        "step": step,
        "micro": None,
        "slowest_step": slowest,
    }
    partial = job_dir / "heartbeat.json.partial"
    partial.write_text(json.dumps(beat))
    partial.replace(job_dir / "heartbeat.json")


def _write_json_atomic(path: Path, data: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


# -- components the recipe instantiates ---------------------------------------------------------


class Tokenizer:
    """What the recipes ask of a tokenizer once the rows are tokenized: the pad id."""

    def __init__(self, pad_id: int, eos_id: int, max_seq_len: int) -> None:
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.max_seq_len = max_seq_len


def tokenizer(pad_id: int, eos_id: int, max_seq_len: int) -> Tokenizer:
    return Tokenizer(pad_id, eos_id, max_seq_len)


def dataset(tokenizer: Tokenizer, path: str) -> list[dict[str, list[int]]]:
    """The pre-tokenized rows: `tokens`/`labels` (SFT) or the chosen/rejected pairs (DPO)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def optimizer(
    params: Any, kind: str, lr: float, weight_decay: float, max_grad_norm: float | None = None
) -> Any:
    """The request's optimizer. With `max_grad_norm` it clips the gradients before each step
    (for the DPO recipe, which has no clipping of its own)."""
    import torch

    base = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}.get(kind, torch.optim.AdamW)
    if max_grad_norm is None:
        return base(params, lr=lr, weight_decay=weight_decay)
    norm = max_grad_norm

    class Clipped(base):  # type: ignore[misc, valid-type]
        def step(self, closure: Any = None) -> Any:
            grads = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(grads, norm)
            return super().step(closure)

    return Clipped(params, lr=lr, weight_decay=weight_decay)


def lr_scheduler(
    optimizer: Any,
    num_training_steps: int,
    last_epoch: int,
    lr: float,
    warmup: int,
    kind: str,
    total_steps: int,
    start_step: int = 0,
) -> Any:
    """llama-post's schedule (as `inline::peft` runs it): linear warm-up, then constant, linear
    or cosine decay to zero at `total_steps`. It starts at `start_step` whatever torchtune
    restored."""
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)


NAMES = {  # torchtune's metric names -> llama-post's StepMetrics fields
    "loss": "loss",
    "lr": "lr",
    "grad_norm": "grad_norm",
    "tokens_per_second_per_gpu": "tokens_per_second",
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
}


class MetricLogger:
    """torchtune's metric logger interface, writing the job folder's metrics and progress."""

    def __init__(
        self, job_dir: str, steps_per_epoch: int, total_steps: int, step_offset: int = 0
    ) -> None:
        self.folder = Path(job_dir)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.step_offset = step_offset
        self.last = time.perf_counter()
        self.slowest: float | None = None  # of the steps after the first (whose time has setup)
        self.logged = False

    def log_config(self, config: Any) -> None:
        pass

    def log(self, name: str, data: Any, step: int) -> None:
        self.log_dict({name: data}, step)

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        step += self.step_offset
        now = time.perf_counter()
        line: dict[str, Any] = {"step": step, "epoch": (step - 1) // self.steps_per_epoch}
        for name, value in payload.items():
            if name in NAMES:
                line[NAMES[name]] = float(value)
        line["step_seconds"] = now - self.last
        line["timestamp"] = time.time()
        self.last = now
        if self.logged:
            self.slowest = max(self.slowest or 0.0, line["step_seconds"])
        self.logged = True
        _beat(self.folder, "training", step, self.slowest)
        loss = line.get("loss")
        if loss is not None and not math.isfinite(loss):  # torchtune would train on
            print(f"non-finite loss ({loss}) at step {step}", flush=True)
            os._exit(EXIT_NONFINITE)
        LAST.update({k: v for k, v in line.items() if isinstance(v, float)})
        with (self.folder / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        _write_json_atomic(
            self.folder / "progress.json",
            {"step": step, "total_steps": self.total_steps, "epoch": line["epoch"]},
        )
        extras = "".join(
            f" {key.replace('_', ' ')} {line[key]:.4f}"
            for key in ("reward_margin", "reward_accuracy")
            if key in line
        )
        print(
            f"step {step} epoch {line['epoch']} loss {line.get('loss', 0.0):.4f} "
            f"lr {line.get('lr', 0.0):.2e}{extras}",
            flush=True,
        )

    def close(self) -> None:
        pass


def checkpointer(
    publish_dir: str,
    base_model: str,
    steps_per_epoch: int,
    dpo: bool = False,
    full: bool = False,
    **kwargs: Any,
) -> Any:
    """torchtune's `FullModelHFCheckpointer` (given `kwargs`), which also publishes each
    epoch's adapter (or, `full`, the whole model) into `publish_dir` as the checkpoint
    `step-NNNNNN`."""
    from torchtune.training import FullModelHFCheckpointer

    class Checkpointer(FullModelHFCheckpointer):  # type: ignore[misc]
        def save_checkpoint(
            self,
            state_dict: dict[str, Any],
            epoch: int,
            intermediate_checkpoint: bool = False,
            adapter_only: bool = False,
        ) -> None:
            super().save_checkpoint(state_dict, epoch, intermediate_checkpoint, adapter_only)
            _publish(
                Path(self._output_dir),
                epoch,
                Path(publish_dir),
                steps_per_epoch * (epoch + 1),
                base_model,
                intermediate_checkpoint,
                dpo,
                full,
            )

    return Checkpointer(**kwargs)


def _publish(
    output_dir: Path,
    epoch: int,
    publish_dir: Path,
    step: int,
    base_model: str,
    intermediate: bool,
    dpo: bool,
    full: bool,
) -> None:
    """Copy what torchtune wrote for an epoch into a checkpoint folder beside its final place,
    then rename it there (a kill mid-copy leaves the previous checkpoint the newest)."""
    produced = output_dir / f"epoch_{epoch}"
    target = publish_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    partial = publish_dir / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if full:  # the whole model in Hugging Face's format, with the base's config and tokenizer
        for path in produced.iterdir():
            if path.is_file():
                shutil.copy2(path, partial / path.name)
    else:  # the adapter alone: the epoch folder's merged weights would be loaded under it too
        for name in ("adapter_model.safetensors", "adapter_model.pt"):
            shutil.copy2(produced / name, partial / name)
        adapter_config = json.loads((produced / "adapter_config.json").read_text())
        adapter_config.update(base_model_name_or_path=base_model, task_type="CAUSAL_LM")
        (partial / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    if intermediate:
        shutil.copy2(output_dir / "recipe_state" / "recipe_state.pt", partial)
    record: dict[str, Any] = {
        "step": step,
        "epoch": epoch,
        "train_loss": LAST.get("loss"),
        "validation_loss": None,
        "created_at": int(time.time()),
        "final": not intermediate,
    }
    if dpo:
        record["reward_margin"] = LAST.get("reward_margin")
    (partial / "checkpoint.json").write_text(json.dumps(record))
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    shutil.rmtree(produced, ignore_errors=True)  # published: torchtune's copy is not needed
    print(f"saved checkpoint {target.name}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
