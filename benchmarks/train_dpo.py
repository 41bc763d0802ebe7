"""LoRA DPO throughput and memory: llama-post's recipe against TRL's DPOTrainer.

Both train SmolLM2-135M-Instruct (float32) with LoRA rank 8 on q/v projections, beta 0.1, the
sigmoid loss, 4 pairs per step, sequences cut at 256 tokens, on the same synthetic pairs, for
the same number of optimizer steps; each in its own process, so peak RSS is its own:

- llama-post: the recipe DPO jobs run (`recipe_dpo.py`), which scores every pair with the
  reference once before training; that time is charged to the timed steps pro rata;
- TRL, its defaults (the reference is the policy with its adapter disabled, run each step), and
  with `precompute_ref_log_probs=True` (its reference pass before training, charged likewise).

Reported: pairs per second over the timed steps, seconds per step, peak RSS.

Run: .venv/bin/python benchmarks/train_dpo.py [--home DIR] [--steps 10] [--pairs 64]
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
sys.path.insert(0, str(ROOT))
WARMUP = 2  # optimizer steps not timed
BATCH = 4
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
]


def pairs(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [
        {
            "prompt": f"Describe: {text(rng.randint(10, 60))}",
            "chosen": f"Certainly! {text(rng.randint(5, 60))}",
            "rejected": text(rng.randint(5, 60)),
        }
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()
    folder = next((args.home / "models").glob("SmolLM2-135M-Instruct*"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in pairs(args.pairs)))
        results = run_each(
            __file__,
            ("ours", "trl-default", "trl-precompute"),
            str(folder),
            str(data),
            str(args.steps),
            tmp,
        )

    print(f"\n{'setting':<15} {'pairs/s':>8} {'s/step':>8} {'peak RSS MiB':>13}")
    for name, r in results.items():
        print(
            f"{name:<15} {r['pairs_per_second']:>8.2f} {r['seconds_per_step']:>8.2f} "
            f"{r['peak_rss_mib']:>13.0f}"
        )
    for theirs in ("trl-default", "trl-precompute"):
        speed = results["ours"]["pairs_per_second"] / results[theirs]["pairs_per_second"]
        memory = results["ours"]["peak_rss_mib"] / results[theirs]["peak_rss_mib"]
        print(f"llama-post over {theirs}: {speed:.2f}x pairs/s, {memory:.2f}x peak RSS")
    print(json.dumps(results))


def run_ours(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from providers.inline.post_training.peft import recipe_dpo
    from providers.jobs.folder import JobSpec

    job_dir = Path(tmp) / "ours"
    job_dir.mkdir()
    (job_dir / "train.jsonl").write_text(data.read_text())
    (job_dir / "validation.jsonl").write_text("")
    request = {
        "finetuned_model": "smollm2",
        "algorithm_config": {"beta": 0.1, "loss_type": "sigmoid"},
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": steps,
            "data_config": {"dataset_id": "bench", "batch_size": BATCH, "max_seq_len": 256},
            "optimizer_config": {"lr": 5e-6, "optimizer_type": "adamw"},
            "max_grad_norm": 1.0,
        },
        "finetuning_config": {
            "type": "LoRA",
            "rank": 8,
            "alpha": 16,
            "lora_attn_modules": ["q_proj", "v_proj"],
        },
    }
    spec = {
        "job_uuid": "ours",
        "request": request,
        "base_folder": folder,
        "checkpoint_dir": str(job_dir / "checkpoints"),
    }
    (job_dir / "job.json").write_text(JobSpec.model_validate(spec).model_dump_json())
    recipe_dpo.main(job_dir)
    metrics = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    reference_seconds = json.loads((job_dir / "reference.json").read_text())["seconds"]
    timed = metrics[WARMUP:]
    seconds = sum(m["step_seconds"] for m in timed)
    seconds += reference_seconds * len(timed) / len(metrics)  # the reference pass, pro rata
    return {
        "pairs_per_second": BATCH * len(timed) / seconds,
        "seconds_per_step": seconds / len(timed),
        "reference_seconds": reference_seconds,
    }


def run_trl(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    records = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in records
        ]
    )
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    precompute = name == "trl-precompute"
    config = DPOConfig(
        output_dir=str(Path(tmp) / name),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        max_length=256,
        beta=0.1,
        loss_type=["sigmoid"],
        learning_rate=5e-6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=BATCH,
    )
    marks: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append(time.perf_counter())

    started = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        callbacks=[Clock()],
    )
    set_up = time.perf_counter() - started  # includes TRL's reference pass when precomputing
    trainer.train()
    seconds = marks[-1] - marks[WARMUP - 1]
    timed = len(marks) - WARMUP
    if precompute:  # charge the reference pass (over all pairs) to the steps that used it
        seconds += set_up * (timed * BATCH) / len(records)
    return {"pairs_per_second": BATCH * timed / seconds, "seconds_per_step": seconds / timed}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        report_one(run_ours if sys.argv[2] == "ours" else run_trl, sys.argv[2:7])
    else:
        main()
