"""LoRA SFT throughput and memory: llama-post's trainers (inline::peft's recipe, and
inline::torchtune, torchtune's own recipe) against TRL's SFTTrainer, each held against the
machine's bound, measured in the same run.

All train SmolLM2-135M-Instruct with LoRA rank 8 on q/v projections, sequence length 256,
batch 8, the same synthetic instruct rows (loss on the completion only), for the same number of
optimizer steps, in fp32 and in bf16 (which is faster depends on the CPU: one with AVX-512 BF16
or AMX computes bf16 matrix products faster; others emulate them). Each configuration runs in
its own process, so peak RSS is its own:

- llama-post, padded batches and packed batches (the recipe that jobs run, `recipe_sft.py`,
  with its defaults: activation checkpointing on, a padded batch run as the fewest packed rows),
  and padded batches with activations kept (`enable_activation_checkpointing: false`); each in
  fp32 and in bf16 (`training_config.dtype`: "fp32", "bf16"; rows `*-bf16`);
- inline::torchtune: the job folder its provider writes for the same request (fp32), run by its
  worker in torchtune's environment (`make engine-torchtune`; the row is left out when that
  environment is missing): `tune run lora_finetune_single_device`, padded batches, activation
  checkpointing on every layer;
- TRL, its default (padded) setting, and packing (`bfd`, padding-free); each in fp32 and with
  `bf16=True` on weights loaded in bfloat16 (rows `*-bf16`; as fast as fp32 weights under
  bf16 autocast in a short check, for less memory; LoRA's weights stay fp32 in both trainers).

Reported: trained tokens per second (real tokens, padding excluded, over the timed steps),
seconds per optimizer step, peak RSS, and the fraction of the bound: the tokens/s the machine's
matmul peak in the row's dtype allows, peak FLOP/s / model FLOPs per trained token. FLOPs per
token are counted (`bounds.py` documents the count: forward 2N, backward 2N input gradients for
the frozen base, LoRA's terms, causal attention by each example's length, the output head on
completion positions only) over every row of the data, as the recipe renders and truncates them.
The matmul peaks and memory bandwidth are measured before and after the settings (the better
figure kept). The summary sets llama-post's best row against TRL's fastest.

Run: .venv/bin/python benchmarks/train_sft.py [--home DIR] [--steps 12] [--rows 256]
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


SETTINGS = (
    "ours-padded",
    "ours-packed",
    "ours-padded-keep",
    "ours-padded-bf16",
    "ours-packed-bf16",
    "ours-padded-keep-bf16",
    "torchtune",
    "trl-default",
    "trl-packing",
    "trl-default-bf16",
    "trl-packing-bf16",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".llama-post")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    folder = bundled_model(args.home)
    names: tuple[str, ...] = SETTINGS
    if not _torchtune_built():
        print("torchtune: left out, its environment is missing (make engine-torchtune)")
        names = tuple(n for n in SETTINGS if n != "torchtune")
    machine = bounds.measure()
    print(bounds.describe(machine), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows)))
        per_token, counted = flops_per_token(folder, data, args.steps)
        print(counted, flush=True)
        results = run_each(__file__, names, str(folder), str(data), str(args.steps), tmp)
    machine = bounds.best(machine, bounds.measure())
    print(bounds.describe(machine) + " (the better of before and after)")

    for name, r in results.items():
        r["bound_tokens_per_second"] = bounds.peak_flops(machine, _dtype(name)) / per_token
        r["fraction_of_bound"] = r["tokens_per_second"] / r["bound_tokens_per_second"]
    print(
        f"\n{'setting':<22} {'dtype':>5} {'tokens/s':>9} {'s/step':>8} {'peak RSS MiB':>13} "
        f"{'bound tok/s':>12} {'of bound':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<22} {_dtype(name):>5} {r['tokens_per_second']:>9.1f} "
            f"{r['seconds_per_step']:>8.2f} {r['peak_rss_mib']:>13.0f} "
            f"{r['bound_tokens_per_second']:>12.0f} {r['fraction_of_bound']:>9.3f}"
        )
    ours = max((n for n in results if n.startswith("ours")), key=_speed(results))
    trl = max((n for n in results if n.startswith("trl")), key=_speed(results))
    speed = results[ours]["tokens_per_second"] / results[trl]["tokens_per_second"]
    memory = results[ours]["peak_rss_mib"] / results[trl]["peak_rss_mib"]
    print(
        f"llama-post's best ({ours}) over TRL's fastest ({trl}): {speed:.2f}x tokens/s, "
        f"{memory:.2f}x peak RSS"
    )
    for fp32 in ("ours-padded", "ours-packed", "ours-padded-keep", "trl-default", "trl-packing"):
        ratio = results[f"{fp32}-bf16"]["tokens_per_second"] / results[fp32]["tokens_per_second"]
        print(f"bf16 over fp32, {fp32}: {ratio:.2f}x tokens/s")
    if "torchtune" in results:
        ratio = (
            results["ours-padded"]["tokens_per_second"] / results["torchtune"]["tokens_per_second"]
        )
        print(f"inline::peft (padded, fp32) over inline::torchtune (fp32): {ratio:.2f}x tokens/s")
    for ours_name, theirs in (
        ("ours-padded", "trl-default"),
        ("ours-packed", "trl-packing"),
        ("ours-padded-bf16", "trl-default-bf16"),
        ("ours-packed-bf16", "trl-packing-bf16"),
        ("torchtune", "trl-default"),
    ):
        if ours_name in results:
            memory = results[ours_name]["peak_rss_mib"] / results[theirs]["peak_rss_mib"]
            print(f"peak RSS {ours_name} / {theirs}: {memory:.2f}")
    print(json.dumps({"machine": machine, "flops_per_token": per_token, "results": results}))


def _speed(results: dict[str, dict[str, float]]) -> Callable[[str], float]:
    return lambda name: results[name]["tokens_per_second"]


def _dtype(name: str) -> str:
    return "bf16" if name.endswith("-bf16") else "fp32"


def _torchtune_built() -> bool:
    from providers.utils.engines import engine_env, is_built

    env = engine_env("torchtune")
    return env is not None and is_built(env)


def flops_per_token(folder: Path, data: Path, steps: int) -> tuple[float, str]:
    """Model FLOPs per trained token of this LoRA SFT (`bounds.py` has the count), over every
    row of the data as the recipe renders and truncates it, and a line that says so."""
    from transformers import AutoTokenizer

    from llama_post.apis.post_training import LoraFinetuningConfig, SupervisedFineTuneRequest
    from providers.training.data import render
    from providers.training.preflight import lora_targets

    train = SupervisedFineTuneRequest.model_validate(request("ours-padded", steps))
    cfg, lora = train.training_config.data, train.algorithm_config
    assert isinstance(lora, LoraFinetuningConfig)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    examples = [
        render(json.loads(line), cfg.data_format, tokenizer, cfg.train_on_input, cfg.max_seq_len)
        for line in data.read_text().splitlines()
    ]
    model = bounds.Decoder.from_folder(folder)
    work = bounds.sft_work(examples)
    targets = lora_targets(lora, ("q_proj", "k_proj", "v_proj", "o_proj"))  # a Llama's names
    per_token = work.lora_training(model, lora.rank, targets) / work.tokens
    line = (
        f"LoRA SFT: {per_token / 1e9:.3f} GFLOP per trained token ({len(examples)} rows, "
        f"{work.tokens / len(examples):.0f} tokens a row, {work.labelled / work.tokens:.0%} of "
        f"them labelled; the decoder's products alone, forward and input gradients, 4N = "
        f"{4 * model.matmul_weights / 1e9:.3f})"
    )
    return per_token, line


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
                "packed": name.startswith("ours-packed"),
                "max_seq_len": 256,
            },
            "optimizer_config": {"lr": 1e-4, "optimizer_type": "adamw"},
            "max_grad_norm": 1.0,
            "efficiency_config": {"enable_activation_checkpointing": "-keep" not in name},
            "dtype": _dtype(name),
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
        "dtype": _dtype(name),  # as the server resolves training_config.dtype into the spec
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
    bf16 = _dtype(name) == "bf16"
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, dtype="bfloat16" if bf16 else "float32"
    )
    packing = name.startswith("trl-packing")
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
        bf16=bf16,
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
