"""LoRA SFT throughput and memory: llama-post's trainers (inline::peft's recipe, and
inline::torchtune, torchtune's own recipe) against TRL's SFTTrainer.

Both train SmolLM2-135M-Instruct (float32; on this CPU fp32 matmuls beat bf16) with LoRA rank 8
on q/v projections, sequence length 256, batch 8, the same synthetic instruct rows (loss on the
completion only), for the same number of optimizer steps. Each configuration runs in its own
process, so peak RSS is its own:

- llama-post, padded batches and packed batches (the recipe that jobs run, `recipe_sft.py`,
  with its defaults: activation checkpointing on, a padded batch run as the fewest packed rows),
  and padded batches with activations kept (`enable_activation_checkpointing: false`);
- inline::torchtune: the job folder its provider writes for the same request, run by its
  worker in torchtune's environment (`make engine-torchtune`): `tune run
  lora_finetune_single_device`, padded batches, activation checkpointing on every layer;
- TRL, its default (padded) setting, and packing (`bfd`, padding-free).

Reported: trained tokens per second (real tokens, padding excluded, over the timed steps),
seconds per optimizer step, and peak RSS.

Run: .venv/bin/python benchmarks/train_sft.py [--home DIR] [--steps 12] [--rows 256]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from settings import report_one, run_each

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2  # optimizer steps not timed
WORDS = [
    "river",
    "mountain",
    "quietly",
    "sudden",
    "lantern",
    "ocean",
    "harvest",
    "violet",
    "engine",
    "marble",
    "whisper",
    "orbit",
    "canyon",
    "meadow",
    "signal",
    "copper",
    "thunder",
    "garden",
    "pocket",
    "silver",
]


def rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [
        {
            "prompt": f"Summarise: {text(rng.randint(10, 110))}",
            "completion": text(rng.randint(5, 90)),
        }
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    folder = next((args.home / "models").glob("SmolLM2-135M-Instruct*"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows)))
        results = run_each(
            __file__,
            (
                "ours-padded",
                "ours-packed",
                "ours-padded-keep",
                "torchtune",
                "trl-default",
                "trl-packing",
            ),
            str(folder),
            str(data),
            str(args.steps),
            tmp,
        )

    print(f"\n{'setting':<14} {'tokens/s':>9} {'s/step':>8} {'peak RSS MiB':>13}")
    for name, r in results.items():
        print(
            f"{name:<14} {r['tokens_per_second']:>9.1f} {r['seconds_per_step']:>8.2f} "
            f"{r['peak_rss_mib']:>13.0f}"
        )
    best_ours = max(
        results["ours-padded"]["tokens_per_second"], results["ours-packed"]["tokens_per_second"]
    )
    for theirs in ("trl-default", "trl-packing"):
        ratio = best_ours / results[theirs]["tokens_per_second"]
        print(f"llama-post (best) over {theirs}: {ratio:.2f}x tokens/s")
    ratio = results["ours-padded"]["tokens_per_second"] / results["torchtune"]["tokens_per_second"]
    print(f"inline::peft (padded) over inline::torchtune: {ratio:.2f}x tokens/s")
    for ours, theirs in (
        ("ours-padded", "trl-default"),
        ("ours-packed", "trl-packing"),
        ("torchtune", "trl-default"),
    ):
        r = results[ours]["peak_rss_mib"] / results[theirs]["peak_rss_mib"]
        print(f"peak RSS {ours} / {theirs}: {r:.2f}")
    print(json.dumps(results))


def request(name: str, steps: int) -> dict[str, Any]:
    """The job every llama-post setting runs (torchtune's takes its rows in order, so its
    batches, whose real tokens it does not log, can be counted here)."""
    return {
        "model": "smollm2",
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": steps,
            "data_config": {
                "dataset_id": "bench",
                "data_format": "instruct",
                "batch_size": 8,
                "shuffle": name != "torchtune",
                "packed": name == "ours-packed",
                "max_seq_len": 256,
            },
            "optimizer_config": {"lr": 1e-4, "optimizer_type": "adamw"},
            "max_grad_norm": 1.0,
            "efficiency_config": {"enable_activation_checkpointing": not name.endswith("-keep")},
        },
        "algorithm_config": {
            "type": "LoRA",
            "rank": 8,
            "alpha": 16,
            "lora_attn_modules": ["q_proj", "v_proj"],
        },
    }


def run_ours(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from providers.inline.post_training.peft import recipe_sft
    from providers.jobs.folder import JobSpec

    job_dir = Path(tmp) / name
    job_dir.mkdir()
    (job_dir / "train.jsonl").write_text(data.read_text())
    (job_dir / "validation.jsonl").write_text("")
    spec = {
        "job_uuid": name,
        "request": request(name, steps),
        "base_folder": folder,
        "checkpoint_dir": str(job_dir / "checkpoints"),
    }
    (job_dir / "job.json").write_text(JobSpec.model_validate(spec).model_dump_json())
    recipe_sft.main(job_dir)
    metrics = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    timed = metrics[WARMUP:]
    seconds = sum(m["step_seconds"] for m in timed)
    tokens = sum(m["tokens"] for m in timed)
    return {"tokens_per_second": tokens / seconds, "seconds_per_step": seconds / len(timed)}


def run_torchtune(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    """The provider's own preparation and worker; the peak RSS is the worker's."""
    import resource
    import subprocess

    from llama_post.apis.post_training import SupervisedFineTuneRequest
    from providers.inline.post_training.torchtune.post_training import (
        ENGINE,
        describe,
        job_files,
        steps_per_epoch,
    )
    from providers.jobs.folder import JobFolder, JobSpec
    from providers.training.preflight import prepare
    from providers.utils.engines import engine_env, is_built

    env = engine_env("torchtune")
    if env is None or not is_built(env):
        sys.exit("torchtune's environment is missing: make engine-torchtune")
    job_dir = Path(tmp) / name
    train = SupervisedFineTuneRequest.model_validate(request(name, steps))
    spec = JobSpec(
        job_uuid=name,
        request=train,
        base_folder=folder,
        checkpoint_dir=str(job_dir / "checkpoints"),
        torch_threads=None,
    )
    records = [json.loads(line) for line in data.read_text().splitlines()]
    prepared = prepare(spec, records, None, steps_per_epoch)
    prepared.files = job_files(describe(Path(folder), train, "model"), prepared, job_dir)
    JobFolder(job_dir).write(prepared)
    with (job_dir / "train.log").open("wb") as log:
        subprocess.run(
            [str(env / "bin" / "python"), str(ENGINE), str(job_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    metrics = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    # step n trained rows [8(n-1), 8n) in order: their real tokens
    per_step = [
        sum(len(e.input_ids) for (e,) in prepared.examples[i : i + 8])
        for i in range(0, 8 * steps, 8)
    ]
    timed = metrics[WARMUP:]
    seconds = sum(m["step_seconds"] for m in timed)
    tokens = sum(per_step[m["step"] - 1] for m in timed)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "tokens_per_second": tokens / seconds,
        "seconds_per_step": seconds / len(timed),
        "peak_rss_mib": peak,
    }


def run_trl(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    records = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in records
        ]
    )
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    packing = name == "trl-packing"
    config = SFTConfig(
        output_dir=str(Path(tmp) / name),
        max_steps=steps,
        per_device_train_batch_size=8,
        max_length=256,
        packing=packing,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        max_grad_norm=1.0,
    )
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        tokens = 0

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), Clock.tokens))

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        callbacks=[Clock()],
    )
    original = trainer.training_step

    def counting_step(model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> Any:
        if "attention_mask" in inputs:
            Clock.tokens += int(inputs["attention_mask"].sum())
        else:
            Clock.tokens += int((inputs["input_ids"] != tokenizer.pad_token_id).sum())
        return original(model, inputs, *rest, **kw)

    trainer.training_step = counting_step  # type: ignore[method-assign]
    trainer.train()
    (t0, n0), (t1, n1) = marks[WARMUP - 1], marks[-1]
    return {
        "tokens_per_second": (n1 - n0) / (t1 - t0),
        "seconds_per_step": (t1 - t0) / (len(marks) - WARMUP),
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        runs = {"ours": run_ours, "torchtune": run_torchtune, "trl": run_trl}
        report_one(runs[sys.argv[2].split("-")[0]], sys.argv[2:7])
    else:
        main()
