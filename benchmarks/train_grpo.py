"""LoRA GRPO throughput and memory: llama-post's recipe against TRL's GRPOTrainer, in one run.

Both train SmolLM2-135M-Instruct with LoRA rank 8 on q/v projections, on the same prompts (the
sum of two one-digit numbers), the same reward (1 when the answer contains the sum, else 0),
the same group of 4 answers to each of 2 prompts a step, at most 16 answer tokens sampled at
temperature 1, the same KL coefficient (0.04, to the starting model: the adapter disabled in
both), one update per batch, per-answer averaging of the loss (TRL's `loss_type="grpo"`) and
group-std advantages; fp32, each in its own process, so peak RSS is its own:

- llama-post: the recipe GRPO jobs run (`recipe_grpo.py`): answers sampled by the inference
  engine's continuous batching on the worker's model, graded by a `string_check` grader;
- TRL 1.16: `GRPOTrainer` with a reward function doing the same check; its answers are sampled
  with transformers' `generate` (no vLLM on a CPU).

Reported, over the steps after the first two: answers (completions) per second, optimizer
steps per second, and peak RSS; then ours over TRL's.

Run: .venv/bin/python benchmarks/train_grpo.py [--home DIR] [--steps 8]
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

from settings import bundled_model, report_one, run_each

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WARMUP = 2  # optimizer steps not timed
PROMPTS_PER_STEP = 2
GROUP = 4
MAX_TOKENS = 16
KL = 0.04
RANK = 8
MODULES = ["q_proj", "v_proj"]
LR = 1e-5
SYSTEM = "Reply with the number only."


def rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                ],
                "answer": str(a + b),
            }
        )
    return out


SETTINGS = ("ours", "trl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    folder = bundled_model(args.home)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        count = PROMPTS_PER_STEP * (args.steps + WARMUP)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows(count)))
        results = run_each(__file__, SETTINGS, str(folder), str(data), str(args.steps), tmp)
    print(f"\n{'setting':<8} {'answers/s':>10} {'steps/s':>8} {'s/step':>8} {'peak RSS MiB':>13}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['answers_per_second']:>10.2f} {r['steps_per_second']:>8.3f} "
            f"{1 / r['steps_per_second']:>8.2f} {r['peak_rss_mib']:>13.0f}"
        )
    ours, trl = results["ours"], results["trl"]
    print(
        f"llama-post over TRL: {ours['answers_per_second'] / trl['answers_per_second']:.2f}x "
        f"answers/s, {ours['steps_per_second'] / trl['steps_per_second']:.2f}x steps/s, "
        f"{ours['peak_rss_mib'] / trl['peak_rss_mib']:.2f}x peak RSS"
    )
    print(json.dumps({"results": results}))


def run_ours(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from providers.inline.post_training.peft import recipe_grpo
    from providers.jobs.folder import JobSpec

    job_dir = Path(tmp) / name
    job_dir.mkdir()
    (job_dir / "train.jsonl").write_text(data.read_text())
    (job_dir / "validation.jsonl").write_text("")
    request = {
        "model": "smollm2",
        "algorithm_config": {
            "group_size": GROUP,
            "max_tokens": MAX_TOKENS,
            "temperature": 1.0,
            "kl_coef": KL,
            "loss_aggregation": "sequence",
        },
        "grader": {
            "type": "string_check",
            "name": "sum",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "like",
        },
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": steps + WARMUP,
            "data_config": {"dataset_id": "bench", "batch_size": PROMPTS_PER_STEP},
            "optimizer_config": {"lr": LR},
            "dtype": "fp32",
        },
        "finetuning_config": {
            "type": "LoRA",
            "rank": RANK,
            "alpha": 16,
            "lora_attn_modules": MODULES,
        },
    }
    spec = {
        "job_uuid": name,
        "request": request,
        "base_folder": folder,
        "checkpoint_dir": str(job_dir / "checkpoints"),
        "dtype": "fp32",
    }
    (job_dir / "job.json").write_text(JobSpec.model_validate(spec).model_dump_json())
    recipe_grpo.main(job_dir)
    metrics = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    marks = [m["timestamp"] for m in metrics]
    seconds = marks[-1] - marks[WARMUP - 1]
    timed = len(marks) - WARMUP
    return {
        "answers_per_second": timed * PROMPTS_PER_STEP * GROUP / seconds,
        "steps_per_second": timed / seconds,
        "reward_mean": sum(m["reward_mean"] for m in metrics) / len(metrics),
    }


def run_trl(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    records = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["messages"], "answer": r["answer"]} for r in records])

    def reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if want in text else 0.0 for text, want in zip(texts, answer, strict=True)]

    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    config = GRPOConfig(
        output_dir=str(Path(tmp) / name),
        max_steps=steps + WARMUP,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        num_generations=GROUP,
        max_completion_length=MAX_TOKENS,
        temperature=1.0,
        beta=KL,
        loss_type="grpo",
        num_iterations=1,
        learning_rate=LR,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        shuffle_dataset=False,
    )
    marks: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append(time.perf_counter())

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=RANK, lora_alpha=16, target_modules=MODULES),
        callbacks=[Clock()],
    )
    trainer.train()
    seconds = marks[-1] - marks[WARMUP - 1]
    timed = len(marks) - WARMUP
    return {
        "answers_per_second": timed * PROMPTS_PER_STEP * GROUP / seconds,
        "steps_per_second": timed / seconds,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        report_one(run_ours if sys.argv[2].startswith("ours") else run_trl, sys.argv[2:7])
    else:
        main()
