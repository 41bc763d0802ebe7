"""LoRA DPO throughput and memory: llama-post's recipe against TRL's DPOTrainer, each held
against the machine's bound, measured in the same run.

Both train SmolLM2-135M-Instruct with LoRA rank 8 on q/v projections, beta 0.1, the sigmoid
loss, 4 pairs per step, sequences cut at 256 tokens, on the same synthetic pairs, for the same
number of optimizer steps, in fp32 and in bf16 (rows `*-bf16`); each in its own process, so peak
RSS is its own:

- llama-post: the recipe DPO jobs run (`recipe_dpo.py`), which scores every pair with the
  reference once before training; that time is charged to the timed steps pro rata; bf16 is
  `training_config.dtype: "bf16"`;
- TRL, its defaults (the reference is the policy with its adapter disabled, run each step), and
  with `precompute_ref_log_probs=True` (its reference pass before training, charged likewise);
  bf16 is `bf16=True` on weights loaded in bfloat16.

Reported: pairs per second over the timed steps, seconds per step, peak RSS, and the fraction of
the bound: the pairs/s the machine's matmul peak in the row's dtype allows, peak FLOP/s / model
FLOPs per pair. FLOPs per pair are counted (`bounds.py` documents the count): the policy's
forward and backward passes (frozen base: input gradients only; LoRA's own terms) over the
chosen and the rejected sequence, their shared prompt once, plus the reference's forward pass
over the same tokens; causal attention by each sequence's length; the output head on the
answers' labelled positions only; averaged over every pair of the data as the recipe renders
them. The matmul peaks and memory bandwidth are measured before and after the settings (the
better figure kept). The summary sets llama-post's best row against TRL's fastest.

Run: .venv/bin/python benchmarks/train_dpo.py [--home DIR] [--steps 10] [--pairs 64]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bounds
from settings import bundled_model, report_one, run_each

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WARMUP = 2  # optimizer steps not timed
BATCH = 4
MAX_SEQ_LEN = 256
RANK = 8
MODULES = ["q_proj", "v_proj"]
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


SETTINGS = (
    "ours",
    "ours-bf16",
    "trl-default",
    "trl-precompute",
    "trl-default-bf16",
    "trl-precompute-bf16",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()
    folder = bundled_model(args.home)
    machine = bounds.measure()
    print(bounds.describe(machine), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in pairs(args.pairs)))
        per_pair, counted = flops_per_pair(folder, data)
        print(counted, flush=True)
        results = run_each(__file__, SETTINGS, str(folder), str(data), str(args.steps), tmp)
    machine = bounds.best(machine, bounds.measure())
    print(bounds.describe(machine) + " (the better of before and after)")

    for name, r in results.items():
        r["bound_pairs_per_second"] = bounds.peak_flops(machine, _dtype(name)) / per_pair
        r["fraction_of_bound"] = r["pairs_per_second"] / r["bound_pairs_per_second"]
    print(
        f"\n{'setting':<20} {'dtype':>5} {'pairs/s':>8} {'s/step':>8} {'peak RSS MiB':>13} "
        f"{'bound pairs/s':>14} {'of bound':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<20} {_dtype(name):>5} {r['pairs_per_second']:>8.3f} "
            f"{r['seconds_per_step']:>8.2f} {r['peak_rss_mib']:>13.0f} "
            f"{r['bound_pairs_per_second']:>14.2f} {r['fraction_of_bound']:>9.3f}"
        )
    ours = max((n for n in results if n.startswith("ours")), key=_speed(results))
    trl = max((n for n in results if n.startswith("trl")), key=_speed(results))
    speed = results[ours]["pairs_per_second"] / results[trl]["pairs_per_second"]
    memory = results[ours]["peak_rss_mib"] / results[trl]["peak_rss_mib"]
    print(
        f"llama-post's best ({ours}) over TRL's fastest ({trl}): {speed:.2f}x pairs/s, "
        f"{memory:.2f}x peak RSS"
    )
    for fp32 in ("ours", "trl-default", "trl-precompute"):
        ratio = results[f"{fp32}-bf16"]["pairs_per_second"] / results[fp32]["pairs_per_second"]
        print(f"bf16 over fp32, {fp32}: {ratio:.2f}x pairs/s")
    for suffix in ("", "-bf16"):
        for theirs in ("trl-default", "trl-precompute"):
            a, b = results[f"ours{suffix}"], results[theirs + suffix]
            print(
                f"ours{suffix} over {theirs}{suffix}: "
                f"{a['pairs_per_second'] / b['pairs_per_second']:.2f}x pairs/s, "
                f"{a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x peak RSS"
            )
    print(json.dumps({"machine": machine, "flops_per_pair": per_pair, "results": results}))


def _speed(results: dict[str, dict[str, float]]) -> Callable[[str], float]:
    return lambda name: results[name]["pairs_per_second"]


def _dtype(name: str) -> str:
    return "bf16" if name.endswith("-bf16") else "fp32"


def flops_per_pair(folder: Path, data: Path) -> tuple[float, str]:
    """Model FLOPs per pair of this LoRA DPO (`bounds.py` has the count), over every pair of
    the data as the recipe renders and truncates it, and a line that says so."""
    from transformers import AutoTokenizer

    from providers.inline.post_training.peft.recipe_dpo import Pair
    from providers.training.data import render_pair

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    work = bounds.dpo_work([Pair(*render_pair(r, tokenizer, MAX_SEQ_LEN)) for r in rows])
    model = bounds.Decoder.from_folder(folder)

    def per_pair(twice: bool) -> float:
        policy = work.lora_training(model, RANK, MODULES, twice)
        return (policy + work.forward(model, twice)) / len(rows)

    line = (
        f"LoRA DPO: {per_pair(False) / 1e9:.1f} GFLOP per pair ({len(rows)} pairs, "
        f"{work.tokens / len(rows):.0f} tokens a pair with the prompt once, "
        f"{work.tokens_twice / len(rows):.0f} with it in both sequences, where the count is "
        f"{per_pair(True) / 1e9:.1f} GFLOP)"
    )
    return per_pair(False), line


def run_ours(name: str, folder: str, data: Path, steps: int, tmp: str) -> dict[str, float]:
    from providers.inline.post_training.peft import recipe_dpo
    from providers.jobs.folder import JobSpec

    job_dir = Path(tmp) / name
    job_dir.mkdir()
    (job_dir / "train.jsonl").write_text(data.read_text())
    (job_dir / "validation.jsonl").write_text("")
    request = {
        "finetuned_model": "smollm2",
        "algorithm_config": {"beta": 0.1, "loss_type": "sigmoid"},
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": steps,
            "data_config": {
                "dataset_id": "bench",
                "batch_size": BATCH,
                "max_seq_len": MAX_SEQ_LEN,
            },
            "optimizer_config": {"lr": 5e-6, "optimizer_type": "adamw"},
            "max_grad_norm": 1.0,
            "dtype": _dtype(name),
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
        "dtype": _dtype(name),  # as the server resolves training_config.dtype into the spec
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
    bf16 = _dtype(name) == "bf16"
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, dtype="bfloat16" if bf16 else "float32"
    )
    precompute = name.startswith("trl-precompute")
    config = DPOConfig(
        output_dir=str(Path(tmp) / name),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        max_length=MAX_SEQ_LEN,
        beta=0.1,
        loss_type=["sigmoid"],
        learning_rate=5e-6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=bf16,
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
        peft_config=LoraConfig(r=RANK, lora_alpha=16, target_modules=MODULES),
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
        report_one(run_ours if sys.argv[2].startswith("ours") else run_trl, sys.argv[2:7])
    else:
        main()
