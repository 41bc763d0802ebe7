"""How a job trains: its data, optimizer, efficiency, trackers, LoRA or full tuning, and the
supervision of its worker; the parts the requests (`models.py`) are made of.

Llama Stack declares most of these fields optional: a null is read as the field left out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from llama_post.errors import InvalidRequestError
from llama_post.schema import StrictModel, only, required_in_spec

# The learning rate of a request without `optimizer_config` (and OpenAI's multiplier's unit).
BASE_LR = {"LoRA": 2e-4, "full": 2e-5}


class ConfigModel(StrictModel):
    """Llama Stack declares most of these fields `X | None` with a default: a null is taken as
    the field left out, so clients that send every optional field as null work unchanged."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            key: value
            for key, value in data.items()
            if value is not None
            or key not in cls.model_fields
            or _admits_none(cls.model_fields[key].annotation)
        }


def _admits_none(annotation: Any) -> bool:
    return annotation is None or type(None) in getattr(annotation, "__args__", ())


class DataConfig(ConfigModel):
    dataset_id: str
    batch_size: int = Field(ge=1, le=1024)
    shuffle: bool = True
    data_format: Literal["instruct", "dialog"] | None = Field(
        None,
        description="instruct: rows' `prompt`; dialog: rows' `messages`. Unset: SFT follows the "
        "dataset's purpose, DPO reads whichever a row has.",
    )
    validation_dataset_id: str | None = None
    validation_split: float = Field(
        0.0, ge=0.0, lt=1.0, description="Held out for validation when no validation dataset."
    )
    packed: bool = Field(False, description="Pack examples; attention never crosses examples.")
    train_on_input: bool = Field(False, description="Also learn the prompt / user turns.")
    max_seq_len: int = Field(1024, ge=16, le=131072, description="Longer examples are truncated.")


class OptimizerConfig(ConfigModel):
    optimizer_type: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    num_warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="After warm-up: keep, or decay linearly or by cosine to zero."
    )


class EfficiencyConfig(ConfigModel):
    enable_activation_checkpointing: bool = Field(
        True,
        description="Recompute each layer's activations in the backward pass. On by default: "
        "it halves a LoRA job's peak memory and costs little time on a CPU.",
    )
    activation_checkpointing_every_n_layers: int = Field(
        2,
        ge=1,
        le=1024,
        description="With checkpointing on, recompute every n-th decoder layer and keep the "
        "others' activations: 1 uses the least memory; the default 2 keeps half, for speed.",
    )
    # Declared by Llama Stack; the trainers here run in one process and refuse them.
    enable_activation_offloading: bool = Field(False, json_schema_extra=only(False))
    memory_efficient_fsdp_wrap: bool = Field(False, json_schema_extra=only(False))
    fsdp_cpu_offload: bool = Field(False, json_schema_extra=only(False))


class TensorBoardTracker(ConfigModel):
    type: Literal["tensorboard"]
    log_dir: str | None = Field(
        None,
        max_length=1024,
        description="Where the event files go: a folder under the provider's storage_dir (a "
        "relative path is taken from there) or its checkpoint_root. Unset: `tensorboard/` in "
        "the job's folder.",
    )


class MLflowTracker(ConfigModel):
    type: Literal["mlflow"]
    tracking_uri: str = Field(
        max_length=2048,
        description="An http(s) MLflow tracking server, or a `file:` store under the "
        "provider's storage_dir or checkpoint_root (MLflow 3 serves file stores only where "
        "the server's environment sets MLFLOW_ALLOW_FILE_STORE=true).",
    )
    experiment_name: str | None = Field(
        None, max_length=500, description="Created if missing. Unset: `llama-post`."
    )
    run_name: str | None = Field(None, max_length=250, description="Unset: the job's id.")


class WandbTracker(ConfigModel):
    type: Literal["wandb"]
    project: str = Field(min_length=1, max_length=128)
    entity: str | None = Field(None, max_length=128, description="Unset: W&B's default.")
    name: str | None = Field(None, max_length=128, description="Unset: the job's id.")
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field([], max_length=20)
    mode: Literal["offline", "online"] = Field(
        "offline",
        description="offline: the run is written under `wandb/` in the job's folder, for "
        "`wandb sync`; online: sent to W&B, only where the server's environment has "
        "WANDB_API_KEY.",
    )


TrackerConfig = Annotated[
    TensorBoardTracker | MLflowTracker | WandbTracker, Field(discriminator="type")
]


class LoggerConfig(ConfigModel):
    log_every_n_steps: int = Field(1, ge=1, description="Optimizer steps between metric lines.")
    trackers: list[TrackerConfig] = Field(
        [],
        max_length=8,
        description="Experiment trackers the server sends the job's metric lines to, each "
        "step once, as the job runs; where each run went is in the job's status (`trackers`).",
    )


class TrainingConfig(ConfigModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=required_in_spec("data_config"))

    n_epochs: int = Field(1, ge=1, le=10000)
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Optimizer steps; unset: the whole epoch."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    max_validation_steps: int | None = Field(
        None, ge=1, description="Batches per validation; unset: all."
    )
    data_config: DataConfig | None = Field(
        None,
        description="The dataset to train on. Optional in Llama Stack's API, but a job needs "
        "one: a request without it is a 400 saying so.",
    )
    optimizer_config: OptimizerConfig | None = Field(
        None,
        description=f"Unset: AdamW at lr {BASE_LR['LoRA']} for LoRA, {BASE_LR['full']} for "
        "full fine-tuning, no warm-up, constant schedule.",
    )
    efficiency_config: EfficiencyConfig | None = None
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="The type the model computes in. auto: bf16 where the device computes it "
        "faster (CUDA with bf16; a CPU with AMX-BF16, or where a measured probe finds it "
        "faster), else fp32. In bf16 the trained weights (LoRA's, or full fine-tuning's master "
        "copy), the optimizer state, the loss and the log-softmax stay fp32. The job's "
        "`resources_allocated.dtype` says what was chosen.",
    )
    seed: int = 42
    save_every: int | None = Field(None, ge=1, description="Checkpoint every this many steps.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip gradients; null: never.")

    @property
    def data(self) -> DataConfig:
        """`data_config`, which a job cannot do without."""
        if self.data_config is None:
            raise InvalidRequestError(
                "training_config.data_config: name the dataset to train on, e.g. "
                '{"dataset_id": "my-data", "batch_size": 4}',
                param="training_config.data_config",
            )
        return self.data_config

    @property
    def optimizer(self) -> OptimizerConfig:
        assert self.optimizer_config is not None, "JobRequest fills in the default"
        return self.optimizer_config


class LoraFinetuningConfig(ConfigModel):
    type: Literal["LoRA"] = "LoRA"
    lora_attn_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1)
    apply_lora_to_mlp: bool = False
    apply_lora_to_output: bool = False
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    use_dora: bool = False
    quantize_base: bool = Field(False, json_schema_extra=only(False))


class FullFinetuningConfig(StrictModel):
    type: Literal["full"] = "full"


AlgorithmConfig = Annotated[
    LoraFinetuningConfig | FullFinetuningConfig, Field(discriminator="type")
]


Phase = Literal["loading", "reference", "training", "validating", "saving"]
StallSeconds = Annotated[float, Field(ge=5, le=86400)]


class SupervisionConfig(ConfigModel):
    """How the server watches a job's worker: llama-post's own (Llama Stack has none)."""

    max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Times a job is restarted from its newest intact checkpoint after a "
        "failure that is the machine's (its worker stalled, was killed or lost, ran out of "
        "memory where the retry can use less, or the server restarted under it). A failure "
        "of the job's own (a traceback, a non-finite loss) is never retried.",
    )
    stall_seconds: StallSeconds | dict[Phase, StallSeconds] | None = Field(
        None,
        description="A worker that shows no progress for this long is killed (and retried). "
        "A number sets every phase; an object sets the phases it names. Unset phases take "
        "the provider's defaults (loading and the reference pass get longer ones).",
    )
    max_wall_seconds: float | None = Field(
        None,
        gt=0,
        description="Refused at creation when the estimate is longer; stopped (failed, with "
        "that reason) once its workers have run this long, over all attempts.",
    )
    max_cost: float | None = Field(
        None,
        gt=0,
        description="In the provider's price_per_device_hour units: refused at creation when "
        "the estimate costs more; stopped once its running time costs this much.",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A non-finite loss or gradient norm: stop the job (failed, naming the "
        "step), or skip that optimizer step (at most max_skipped_steps times, then stop).",
    )
    max_skipped_steps: int = Field(3, ge=0, le=10000)


class TrainingEvaluations(ConfigModel):
    """Benchmarks (`/v1/evaluation/benchmarks`) the server runs on the job's checkpoints as they
    are saved and on its fine-tuned model at the end, as the job's owner: evaluation jobs listed
    with `GET /v1/evaluation/jobs?job_uuid=...`. llama-post's own (Llama Stack has none)."""

    benchmarks: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]] = Field(
        min_length=1, max_length=8
    )
    every_checkpoint: bool = Field(True, description="Each checkpoint as it is saved.")
    at_end: bool = Field(True, description="The fine-tuned model once the job completes.")
    max_rows: int | None = Field(None, ge=1, description="The first rows of each benchmark.")
    max_tokens: int = Field(64, ge=1, le=8192)
