"""The PostTraining API of `inline::torchtune`: SFT (LoRA or full) and LoRA DPO through
torchtune's own single-device recipes (`tune run lora_finetune_single_device`,
`full_finetune_single_device`, `lora_dpo_single_device`), run in torchtune's environment on the
shared local jobs (`providers/jobs/local.py`). A full fine-tune trains every weight in the job's
type (bf16 weights and optimizer state under bf16, as torchtune's recipe does, where inline::peft
keeps fp32 masters) and publishes each epoch's whole model as a Hugging Face folder.

At creation the server checks the request, builds the model's torchtune description from its
`config.json` (Llama and Qwen2 architectures; anything else is refused by name), renders and
tokenizes the rows with llama-post's own data code (so torchtune and peft train on identical
tokens and masks) and writes the recipe config. The worker (`engine/llama_post_torchtune.py`)
runs in torchtune's environment and reads nothing but the job's folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_post.apis.post_training import DPOLossType, LoraFinetuningConfig, TrainingRequest
from llama_post.errors import ConfigError, InvalidRequestError
from providers.inline.post_training.torchtune.config import TorchtunePostTrainingConfig
from providers.jobs.folder import JobFolder, JobSpec, Prepared
from providers.jobs.trainer import Gathered
from providers.training.data import IGNORE, Example
from providers.training.methods import DPO, SFT, TrainingMethod, method_of
from providers.training.preflight import prepare
from providers.utils.engines import engine_env, is_built

log = logging.getLogger(__name__)
ENGINE = Path(__file__).resolve().parent / "engine" / "llama_post_torchtune.py"
ARCHITECTURES = ("llama", "qwen2")
# torchtune's names for the attention projections LoRA can adapt
ATTENTION = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "o_proj": "output_proj",
    "output_proj": "output_proj",
}


@dataclass(frozen=True)
class Recipe:
    """A method as torchtune runs it: its recipe, what of the method's request it cannot do,
    and the loss (and gradient clipping) in its config."""

    name: str
    refusals: Callable[[TrainingRequest], list[tuple[str, str]]]
    configure: Callable[[TrainingRequest, dict[str, Any]], None]


def _no_refusals(request: TrainingRequest) -> list[tuple[str, str]]:
    return []


def _sft_loss(request: TrainingRequest, config: dict[str, Any]) -> None:
    config["loss"] = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    config["clip_grad_norm"] = request.training_config.max_grad_norm


def _dpo_refusals(request: TrainingRequest) -> list[tuple[str, str]]:
    if DPO.api.narrow(request).algorithm_config.loss_type != DPOLossType.ipo:
        return []
    return [
        (
            "algorithm_config.loss_type",
            "torchtune 0.6.1 has the sigmoid (DPO) and hinge (RSO) losses; use one of "
            "those, or inline::peft for ipo",
        )
    ]


def _dpo_loss(request: TrainingRequest, config: dict[str, Any]) -> None:
    alignment = DPO.api.narrow(request).algorithm_config
    if alignment.loss_type == DPOLossType.hinge:
        loss = {"_component_": "torchtune.rlhf.loss.RSOLoss", "gamma": alignment.beta}
    else:
        loss = {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": alignment.beta}
    config["loss"] = loss
    config["optimizer"]["max_grad_norm"] = request.training_config.max_grad_norm  # not clipped


def _full_dpo_refusals(request: TrainingRequest) -> list[tuple[str, str]]:
    return [
        (
            f"{request.tuning_field}.type",
            "torchtune 0.6.1 has no single-device full DPO recipe; use LoRA, or inline::peft "
            "for full DPO",
        )
    ]


RECIPES = {
    SFT.name: Recipe("lora_finetune_single_device", _no_refusals, _sft_loss),
    DPO.name: Recipe("lora_dpo_single_device", _dpo_refusals, _dpo_loss),
}
FULL_RECIPES = {  # every weight trained
    SFT.name: Recipe("full_finetune_single_device", _no_refusals, _sft_loss),
    DPO.name: Recipe("lora_dpo_single_device", _full_dpo_refusals, _dpo_loss),
}


def recipe_of(request: TrainingRequest) -> Recipe:
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    return (RECIPES if lora else FULL_RECIPES)[request.method]


class TorchtunePostTraining:
    """SFT (LoRA or full) and LoRA DPO by torchtune's recipes, each job a `tune run` in
    torchtune's own environment."""

    methods = frozenset(RECIPES)

    def __init__(self, config: TorchtunePostTrainingConfig, provider_id: str) -> None:
        env = config.environment or engine_env("torchtune")
        if env is None or not is_built(env):
            where = f" at {env}" if env else ""
            raise ConfigError(
                f"provider {provider_id!r} (inline::torchtune): no torchtune environment{where}; "
                "build it with `make engine-torchtune`, or name one in the provider's "
                "`environment`"
            )
        self.python = env / "bin" / "python"

    def worker(self, request: TrainingRequest, job_dir: Path) -> list[str]:
        return [str(self.python), str(ENGINE), str(job_dir)]

    def multi_rank(self, method: TrainingMethod[Any]) -> bool:
        return False  # torchtune's single-device recipes

    def calibrator(self, folder: Path) -> list[str] | None:
        return None

    def lighter(self, spec: JobSpec) -> JobSpec | None:
        return None

    def refusals(self, request: TrainingRequest) -> list[tuple[str, str]]:
        if request.method not in RECIPES:
            return [
                (
                    "algorithm_config",
                    "inline::torchtune runs torchtune's SFT and DPO recipes, not reinforcement "
                    "fine-tuning; send it to an inline::peft provider (provider_id)",
                )
            ]
        tuning_field = request.tuning_field
        cfg = request.training_config
        data = cfg.data
        found = []
        algo = request.tuning
        if isinstance(algo, LoraFinetuningConfig):
            unknown = [m for m in algo.lora_attn_modules if m not in ATTENTION]
            if unknown:
                found.append(
                    (
                        f"{tuning_field}.lora_attn_modules",
                        f"torchtune adapts {', '.join(sorted(ATTENTION))}, not "
                        f"{', '.join(unknown)}",
                    )
                )
        found += recipe_of(request).refusals(request)
        if request.supervision.on_nonfinite == "skip":
            found.append(
                (
                    "supervision.on_nonfinite",
                    "torchtune's recipes take every step; its worker can only stop at a "
                    "non-finite loss: use stop, or inline::peft to skip steps",
                )
            )
        no_validation = "torchtune's single-device recipes run no validation; leave it unset"
        if data.validation_dataset_id:
            found.append(("training_config.data_config.validation_dataset_id", no_validation))
        if data.validation_split:
            found.append(("training_config.data_config.validation_split", no_validation))
        if cfg.max_validation_steps is not None:
            found.append(("training_config.max_validation_steps", no_validation))
        if data.packed and method_of(request).whole_answers is None:  # else refused for all
            found.append(
                (
                    "training_config.data_config.packed",
                    "not supported by inline::torchtune; leave it false, or use inline::peft",
                )
            )
        eff = cfg.efficiency_config
        if (
            eff is not None
            and eff.enable_activation_checkpointing
            and "activation_checkpointing_every_n_layers" in eff.model_fields_set
            and eff.activation_checkpointing_every_n_layers != 1
        ):
            found.append(
                (
                    "training_config.efficiency_config.activation_checkpointing_every_n_layers",
                    "torchtune checkpoints every layer; set 1 or leave it unset",
                )
            )
        return found

    async def prepare(self, got: Gathered, job_dir: Path) -> Prepared:
        request = got.spec.request
        model_field = request.model_field
        if got.spec.adapter_folder is not None:
            raise InvalidRequestError(
                f"{model_field}: {request.model_id!r} is a LoRA adapter; inline::torchtune "
                "starts adapters from a base model (train its base, or continue it with "
                "inline::peft)",
                param=model_field,
            )
        model = describe(Path(got.spec.base_folder), request, model_field)
        prepared = await asyncio.to_thread(
            prepare, got.spec, got.train, got.validation, steps_per_epoch
        )
        if prepared.report.steps_per_epoch == 0:
            cfg = request.training_config
            raise InvalidRequestError(
                f"training_config.data_config.batch_size: {prepared.report.rows} rows make no "
                f"full step of {cfg.data.batch_size} rows x {cfg.gradient_accumulation_steps} "
                "accumulation steps (torchtune drops a last partial batch); use a smaller batch",
                param="training_config.data_config.batch_size",
            )
        per_epoch = prepared.report.steps_per_epoch
        save_every = request.training_config.save_every
        if save_every is not None and save_every < per_epoch:
            raise InvalidRequestError(
                f"training_config.save_every: torchtune checkpoints at epoch ends only, every "
                f"{per_epoch} steps here; set save_every to {per_epoch} or more (a checkpoint "
                "at each epoch end), leave it unset, or use inline::peft",
                param="training_config.save_every",
            )
        prepared.files = job_files(model, prepared, job_dir)
        return prepared


TOKENS = "tokens.jsonl"
PLAN = "torchtune.json"


def job_files(model: dict[str, Any], prepared: Prepared, job_dir: Path) -> dict[str, str]:
    """The worker's files: the tokenized rows and the recipe plan."""
    request = prepared.spec.request
    rows = tokenized(prepared.examples, method_of(request).pairs)
    if request.training_config.data.shuffle:
        # torchtune's sampler shuffles each epoch with a seed of its own (0): rows stored in an
        # order drawn from the request's seed make the seed decide the batches, as in peft
        random.Random(request.training_config.seed).shuffle(rows)
    plan = recipe_plan(prepared.spec, model, prepared, job_dir)
    return {
        TOKENS: "".join(json.dumps(row) + "\n" for row in rows),
        PLAN: json.dumps(plan, indent=2),
    }


def steps_per_epoch(examples: list[Example], request: TrainingRequest) -> list[int]:
    """Optimizer steps per epoch as torchtune counts them: whole batches only (it drops the
    last partial one), then whole accumulation groups, capped by `max_steps_per_epoch`."""
    cfg = request.training_config
    steps = len(examples) // cfg.data.batch_size // cfg.gradient_accumulation_steps
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    return [steps] * cfg.n_epochs


def tokenized(examples: list[list[Example]], pairs: bool) -> list[dict[str, list[int]]]:
    """Rows as torchtune's collators take them. Labels line up with the tokens (the recipes
    shift them); the first is never learned, as in inline::peft."""

    def labels(example: Example) -> list[int]:
        return [IGNORE, *example.labels[1:]]

    if pairs:
        return [
            {
                "chosen_input_ids": chosen.input_ids,
                "chosen_labels": labels(chosen),
                "rejected_input_ids": rejected.input_ids,
                "rejected_labels": labels(rejected),
            }
            for chosen, rejected in examples
        ]
    return [{"tokens": e.input_ids, "labels": labels(e)} for (e,) in examples]


def describe(base: Path, request: TrainingRequest, field: str) -> dict[str, Any]:
    """The model as torchtune builds it: its builder's arguments, from `config.json`, and the
    checkpointer's model type. A model torchtune cannot build is a 400 naming what it can."""
    config = json.loads((base / "config.json").read_text())
    kind = config.get("model_type")
    name = request.model_id
    if kind not in ARCHITECTURES:
        raise InvalidRequestError(
            f"{field}: {name!r} is a {kind!r} model; inline::torchtune builds "
            f"{' and '.join(ARCHITECTURES)} models (use inline::peft for others)",
            param=field,
        )
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    problems = []
    if config.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim {config['head_dim']} is not hidden_size / heads")
    if config.get("rope_scaling"):
        problems.append("its RoPE is scaled (rope_scaling)")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"its activation is {config['hidden_act']}")
    if kind == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        problems.append("its projections have biases")
    if kind == "qwen2" and config.get("use_sliding_window"):
        problems.append("it uses sliding-window attention")
    if problems:
        raise InvalidRequestError(
            f"{field}: torchtune's {kind} builder cannot reproduce {name!r}: "
            f"{'; '.join(problems)}; use inline::peft",
            param=field,
        )
    tied = bool(config.get("tie_word_embeddings", kind == "llama"))
    algo = request.tuning
    lora = isinstance(algo, LoraFinetuningConfig)
    if isinstance(algo, LoraFinetuningConfig) and tied and algo.apply_lora_to_output:
        tuning = "finetuning_config" if field == "finetuned_model" else "algorithm_config"
        raise InvalidRequestError(
            f"{tuning}.apply_lora_to_output: {name!r} ties its output to its embeddings, "
            "which torchtune does not adapt; leave it false",
            param=f"{tuning}.apply_lora_to_output",
        )
    weights = sorted(p.name for p in base.glob("*.safetensors"))
    if not weights:
        raise InvalidRequestError(
            f"{field}: {name!r} has no safetensors weights, which torchtune's checkpointer reads",
            param=field,
        )
    builder: dict[str, Any] = {
        "vocab_size": config["vocab_size"],
        "num_layers": config["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": config.get("num_key_value_heads", heads),
        "embed_dim": hidden,
        "intermediate_dim": config["intermediate_size"],
        "max_seq_len": min(
            config.get("max_position_embeddings", 4096), request.training_config.data.max_seq_len
        ),
        "norm_eps": config.get("rms_norm_eps", 1e-5),
        "rope_base": config.get("rope_theta", 10000.0),
        "tie_word_embeddings": tied,
    }
    if isinstance(algo, LoraFinetuningConfig):
        builder.update(
            lora_attn_modules=sorted({ATTENTION[m] for m in algo.lora_attn_modules}),
            apply_lora_to_mlp=algo.apply_lora_to_mlp,
            apply_lora_to_output=algo.apply_lora_to_output,
            lora_rank=algo.rank,
            lora_alpha=algo.alpha,
            lora_dropout=algo.dropout,
            use_dora=algo.use_dora,
        )
    # the LoRA builders, or the plain decoders' component builders for a full fine-tune
    if kind == "llama":
        # Llama 3.2's builder, with no Llama-3 RoPE scaling (scale_factor 1)
        component = "lora_llama3_2" if lora else "_component_builders.llama3_2"
        builder.update(_component_=f"torchtune.models.llama3_2.{component}", scale_factor=1)
        model_type = "LLAMA3_2" if tied else "LLAMA3"
    else:
        component = "lora_qwen2" if lora else "_component_builders.qwen2"
        builder.update(_component_=f"torchtune.models.qwen2.{component}")
        model_type = "QWEN2"
    return {"builder": builder, "model_type": model_type, "weights": weights}


def recipe_plan(
    spec: JobSpec, model: dict[str, Any], prepared: Prepared, job_dir: Path
) -> dict[str, Any]:
    """What the worker runs: the recipe and its config, in torchtune's own terms."""
    request = spec.request
    recipe = recipe_of(request)
    lora = isinstance(request.tuning, LoraFinetuningConfig)
    cfg = request.training_config
    data = cfg.data
    opt = cfg.optimizer
    per_epoch = prepared.report.steps_per_epoch
    total = prepared.report.total_steps
    folder = JobFolder(job_dir)
    tokenizer = json.loads((Path(spec.base_folder) / "config.json").read_text())
    eos = tokenizer.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    pad = tokenizer.get("pad_token_id")
    efficiency = cfg.efficiency_config
    config: dict[str, Any] = {
        "output_dir": str(job_dir / "torchtune"),
        "model": model["builder"],
        "tokenizer": {
            "_component_": "llama_post_torchtune.tokenizer",
            "pad_id": pad if pad is not None else (eos or 0),
            "eos_id": eos or 0,
            "max_seq_len": data.max_seq_len,
        },
        "checkpointer": {
            "_component_": "llama_post_torchtune.checkpointer",
            "publish_dir": spec.checkpoint_dir,
            "base_model": spec.base_folder,
            "steps_per_epoch": per_epoch,
            "dpo": method_of(request).pairs,
            "full": not lora,
            "checkpoint_dir": spec.base_folder,
            "checkpoint_files": model["weights"],
            "model_type": model["model_type"],
            "output_dir": str(job_dir / "torchtune"),
        },
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": lora,
        "optimizer_in_bwd": False,  # the full recipe's: clipping and accumulation need it off
        "dataset": {"_component_": "llama_post_torchtune.dataset", "path": str(job_dir / TOKENS)},
        "seed": cfg.seed,
        "shuffle": data.shuffle,
        "batch_size": data.batch_size,
        "optimizer": {
            "_component_": "llama_post_torchtune.optimizer",
            "kind": opt.optimizer_type,
            "lr": opt.lr,
            "weight_decay": opt.weight_decay,
        },
        "lr_scheduler": {
            "_component_": "llama_post_torchtune.lr_scheduler",
            "lr": opt.lr,
            "warmup": opt.num_warmup_steps,
            "kind": opt.lr_scheduler,
            "total_steps": total,
        },
        "epochs": cfg.n_epochs,
        "max_steps_per_epoch": per_epoch,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "compile": False,
        "metric_logger": {
            "_component_": "llama_post_torchtune.MetricLogger",
            "job_dir": str(folder.path),
            "steps_per_epoch": per_epoch,
            "total_steps": total,
        },
        "log_every_n_steps": request.logger_config.log_every_n_steps
        if request.logger_config
        else 1,
        "log_peak_memory_stats": False,
        "device": spec.device,
        "dtype": spec.dtype,  # torchtune trains its LoRA (or every) weight in this type too
        "enable_activation_checkpointing": efficiency is None
        or efficiency.enable_activation_checkpointing,
        "enable_activation_offloading": False,
    }
    recipe.configure(request, config)
    return {
        "recipe": recipe.name,
        "full": not lora,
        "rows": len(prepared.train),
        "torch_threads": spec.torch_threads,
        "config": config,
    }
