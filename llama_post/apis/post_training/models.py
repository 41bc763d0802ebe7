"""Post-training requests and job records, following Llama Stack's post-training API.

Every field is honoured or refused by name: a value the trainer cannot honour (a quantized base,
activation offloading, a hyperparameter search) is a 400 naming the field, never ignored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from llama_post.apis.post_training.graders import Grader
from llama_post.errors import InvalidRequestError
from llama_post.schema import StrictModel, only, required_in_spec

JOB_UUID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
JobUuid = Annotated[str, Field(pattern=JOB_UUID_PATTERN, examples=["sft-0123456789abcdef"])]
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


class JobRequest(ConfigModel):
    """What every job request has besides its model, method and algorithm."""

    job_uuid: str | None = Field(None, pattern=JOB_UUID_PATTERN)
    provider_id: str | None = Field(
        None, description="The post-training provider that runs the job; unset: the first."
    )
    training_config: TrainingConfig
    checkpoint_dir: str | None = Field(
        None, description="A folder under the provider's checkpoint root; default: the job's own."
    )
    hyperparam_search_config: dict[str, JsonValue] | None = Field(
        None,
        description="Not supported; must be null or empty.",
        json_schema_extra={"maxProperties": 0},
    )
    logger_config: LoggerConfig | None = None
    supervision: SupervisionConfig = Field(
        default_factory=SupervisionConfig,
        description="Stall watchdog, automatic retries and the non-finite guard.",
    )
    metadata: dict[str, Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict, max_length=16, description="Up to 16 labels, returned with the job."
    )

    @property
    def tuning(self) -> LoraFinetuningConfig | FullFinetuningConfig:
        raise NotImplementedError

    @property
    def method(self) -> Literal["sft", "dpo", "grpo"]:
        """What the job does, decided once by the request's type."""
        raise NotImplementedError

    @property
    def model_field(self) -> str:
        """The request's field naming the model to start from."""
        return "model"

    @property
    def tuning_field(self) -> str:
        """The request's field holding the LoRA or full configuration."""
        return "finetuning_config"

    @model_validator(mode="after")
    def _default_optimizer(self) -> JobRequest:
        training = self.training_config
        if training.optimizer_config is None:
            training.optimizer_config = OptimizerConfig(lr=BASE_LR[self.tuning.type])
        return self


class SupervisedFineTuneRequest(JobRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra=required_in_spec("model"))

    model: str | None = Field(
        None,
        description="The base model to fine-tune. Optional in Llama Stack's API, but a job "
        "needs one: a request without it is a 400 saying so.",
    )
    algorithm_config: AlgorithmConfig = Field(
        default_factory=LoraFinetuningConfig,
        description="LoRA or full fine-tuning; unset: LoRA of rank 8 on q_proj and v_proj.",
    )

    @model_validator(mode="before")
    @classmethod
    def _lora_by_default(cls, data: Any) -> Any:
        return lora_without_type(data, "algorithm_config")

    @property
    def model_id(self) -> str:
        if self.model is None:
            raise InvalidRequestError(
                "model: name the registered model to fine-tune (GET /v1/models lists them)",
                param="model",
            )
        return self.model

    @property
    def tuning(self) -> LoraFinetuningConfig | FullFinetuningConfig:
        return self.algorithm_config

    @property
    def method(self) -> Literal["sft", "dpo", "grpo"]:
        return "sft"

    @property
    def tuning_field(self) -> str:
        return "algorithm_config"


def lora_without_type(data: Any, field: str) -> Any:
    # llama-stack-client sends LoRA configs without `type`.
    algo = data.get(field) if isinstance(data, dict) else None
    if algo is None and isinstance(data, dict) and field in data:  # null: the default
        data = {k: v for k, v in data.items() if k != field}
    if isinstance(algo, dict) and "type" not in algo:
        data = {**data, field: {**algo, "type": "LoRA"}}
    return data


class DPOLossType(StrEnum):
    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"


class DPOAlignmentConfig(ConfigModel):
    beta: float = Field(
        0.1, gt=0.0, le=100.0, description="How far the policy may move from the reference."
    )
    loss_type: DPOLossType = Field(
        DPOLossType.sigmoid,
        description="sigmoid (DPO), hinge (SLiC), or ipo (IPO, on per-token average log-probs).",
    )


class PreferenceOptimizeRequest(JobRequest):
    """Direct preference optimization on a preference dataset (`prompt` or `messages`, then
    `chosen` and `rejected`). The reference is the starting model: its log-probabilities are
    computed once per pair before training, so no second copy of the weights is kept."""

    finetuned_model: str = Field(
        description="The model to start from and compare with: a registered base model or a "
        "fine-tuned checkpoint such as `ft/<job>` (SFT, then DPO)."
    )
    algorithm_config: DPOAlignmentConfig = DPOAlignmentConfig()
    finetuning_config: AlgorithmConfig = Field(
        default_factory=LoraFinetuningConfig,
        description="Train a LoRA adapter (the default) or every weight.",
    )

    @model_validator(mode="before")
    @classmethod
    def _lora_by_default(cls, data: Any) -> Any:
        return lora_without_type(data, "finetuning_config")

    @property
    def model_id(self) -> str:
        return self.finetuned_model

    @property
    def tuning(self) -> LoraFinetuningConfig | FullFinetuningConfig:
        return self.finetuning_config

    @property
    def method(self) -> Literal["sft", "dpo", "grpo"]:
        return "dpo"

    @property
    def model_field(self) -> str:
        return "finetuned_model"


class GRPOConfig(ConfigModel):
    """Group relative policy optimization: for each prompt, sample `group_size` answers with
    the current policy, score them with the job's grader, and push up the answers that beat
    their group's mean (the clipped policy-gradient objective, with an optional KL penalty to
    the starting model)."""

    type: Literal["grpo"] = "grpo"
    group_size: int = Field(
        4, ge=2, le=64, description="Answers sampled per prompt; advantages are within a group."
    )
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, ge=1, le=4096, description="Most tokens an answer may have.")
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        [], max_length=4, description="An answer ends before any of these (as in inference)."
    )
    kl_coef: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Weight of the KL penalty to the starting model (k3 estimator, per token); "
        "0: none. LoRA only: the reference is the base with the adapter disabled, so no "
        "second copy of the weights exists.",
    )
    clip_epsilon: float = Field(
        0.2, gt=0.0, le=10.0, description="The probability ratio is clipped to 1 +- this."
    )
    advantage_clip: float | None = Field(
        None, gt=0.0, description="Clamp advantages to +- this; unset: no clamp."
    )
    advantage_normalization: Literal["std", "none"] = Field(
        "std",
        description="std: (reward - group mean) / (group std + 1e-4), as GRPO; none: reward - "
        "group mean (Dr. GRPO).",
    )
    loss_aggregation: Literal["sequence", "token"] = Field(
        "sequence",
        description="sequence: average each answer's tokens, then the answers (GRPO); token: "
        "average over every answer token of the step (DAPO).",
    )
    num_iterations: int = Field(
        1,
        ge=1,
        le=16,
        description="Optimizer updates on each batch of sampled answers (beyond the first, "
        "the ratio to the sampling policy and its clip come into play).",
    )


class ReinforceRequest(JobRequest):
    """Reinforcement fine-tuning (GRPO) on a prompt dataset (`prompt` or `messages`, and the
    reference fields the grader reads), graded by `grader`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=required_in_spec("grader"))

    model: str = Field(
        description="The model to start from: a registered base model or a fine-tuned "
        "checkpoint such as `ft/<job>` (SFT, then GRPO)."
    )
    algorithm_config: GRPOConfig = GRPOConfig()
    finetuning_config: AlgorithmConfig = Field(
        default_factory=LoraFinetuningConfig,
        description="Train a LoRA adapter (the default) or every weight.",
    )
    grader: Grader | None = Field(
        None,
        description="Scores each sampled answer (0 to 1 for most graders); a job needs one.",
    )

    @model_validator(mode="before")
    @classmethod
    def _lora_by_default(cls, data: Any) -> Any:
        return lora_without_type(data, "finetuning_config")

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def tuning(self) -> LoraFinetuningConfig | FullFinetuningConfig:
        return self.finetuning_config

    @property
    def method(self) -> Literal["sft", "dpo", "grpo"]:
        return "grpo"

    @property
    def grading(self) -> Grader:
        """`grader`, which a job cannot do without."""
        if self.grader is None:
            raise InvalidRequestError(
                'grader: say how to score answers, e.g. {"type": "string_check", "name": '
                '"exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", '
                '"operation": "eq"}',
                param="grader",
            )
        return self.grader


TrainingRequest = SupervisedFineTuneRequest | PreferenceOptimizeRequest | ReinforceRequest


class JobStatus(StrEnum):
    scheduled = "scheduled"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    unknown = "unknown"  # a remote provider's job whose server cannot be reached now


class TrainingMetrics(BaseModel):
    epoch: int
    train_loss: float | None = None
    validation_loss: float | None = None
    perplexity: float | None = None


CHECKPOINT_ID_PATTERN = r"^step-[0-9]{1,12}$"
CheckpointId = Annotated[str, Field(pattern=CHECKPOINT_ID_PATTERN, examples=["step-000010"])]


class Checkpoint(BaseModel):
    identifier: str = Field(description="`<job_uuid>/<checkpoint_id>`.")
    checkpoint_id: str = Field("", description="Its name within the job: `step-000010`.")
    created_at: int
    epoch: int
    step: int
    post_training_job_id: str
    path: str
    training_metrics: TrainingMetrics | None = None
    model_id: str | None = Field(None, description="The model it is served as, once registered.")
    type: Literal["training", "sampler"] = Field(
        "sampler",
        description="training: it holds the state a job resumes from, and the weights; sampler: "
        "the weights alone (a job's final checkpoint).",
    )
    size_bytes: int | None = None
    public: bool = Field(False, description="Published: every key may read and download it.")
    expires_at: int | None = Field(None, description="When the server removes it (a TTL).")


class CheckpointList(BaseModel):
    data: list[Checkpoint]


class ListCheckpointsRequest(StrictModel):
    limit: int = Field(20, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class CheckpointPage(BaseModel):
    data: list[Checkpoint]
    total: int
    limit: int
    offset: int


class DeletedCheckpoint(BaseModel):
    identifier: str
    deleted: bool = True
    model_removed: str | None = Field(
        None, description="The model it was served as, unregistered with it."
    )


class CheckpointTTLRequest(StrictModel):
    ttl_seconds: int | None = Field(
        ..., ge=1, le=10 * 365 * 86400, description="From now; null clears the expiry."
    )


class ArchiveUrl(BaseModel):
    url: str = Field(description="Fetch it with no credentials: the URL carries its own token.")
    expires_at: int


class PostTrainingJob(BaseModel):
    job_uuid: str


class ListPostTrainingJobsResponse(BaseModel):
    data: list[PostTrainingJob]


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    peak_memory_bytes: int | None = Field(
        None, description="The worker's peak memory so far, where its trainer reports it."
    )


class MemoryEstimate(BaseModel):
    """Peak memory of a job's worker, in bytes, by what holds it."""

    weights: int = Field(description="The model's weights, in the type they are held in.")
    trained_state: int = Field(
        description="What training adds per trained parameter: its fp32 copy where the "
        "weights are not fp32, its gradient, the optimizer's state."
    )
    activations: int = Field(
        description="Kept for the backward pass of the largest micro-batch, under the job's "
        "activation checkpointing."
    )
    logits: int = Field(description="The output head's chunk of logits and its gradient.")
    runtime: int = Field(description="The interpreter, torch and its libraries.")
    peak: int = Field(
        description="The estimate: measured on this device by the calibration where it ran, "
        "else the sum of the parts."
    )
    available: int | None = Field(None, description="What the device has for it.")


class Calibration(BaseModel):
    """A few timed micro-steps of the job's largest micro-batch, run on this device."""

    seconds_per_micro_step: float
    flops_per_second: float = Field(description="Achieved on the calibration's micro-steps.")
    load_seconds: float
    save_seconds: float
    peak_memory: int
    cached: bool = Field(description="Measured before for the same model and settings.")


class TrainingEstimate(BaseModel):
    """What a job will take on this deployment's device, before it runs."""

    device: str
    dtype: Literal["fp32", "bf16"]
    optimizer_steps: int
    tokens: int = Field(description="Tokens run through the model, over every step.")
    trained_tokens: int = Field(description="Of those, the labelled ones the loss is taken on.")
    flops: float = Field(description="Model FLOPs, counted from the architecture.")
    memory: MemoryEstimate
    wall_seconds: float | None = Field(
        None, description="From the calibration; null where it did not run."
    )
    cost: float | None = Field(
        None, description="wall_seconds times the distribution's price_per_device_hour."
    )
    calibration: Calibration | None = None


class JobAttempt(BaseModel):
    """One run of a job's worker."""

    attempt: int = Field(description="1 for the first run.")
    started_at: int
    ended_at: int | None = None
    ended_because: str | None = Field(None, description="Why it ended, where it did not finish.")
    resumed_from: str | None = Field(None, description="The checkpoint it started from.")


class TrackerRun(BaseModel):
    """Where one of a job's trackers sends its metrics (the job's `logger_config.trackers`, in
    order)."""

    type: Literal["tensorboard", "mlflow", "wandb"]
    log_dir: str | None = Field(None, description="TensorBoard: the event files' folder.")
    tracking_uri: str | None = Field(None, description="MLflow: the tracking URI.")
    experiment_id: str | None = Field(None, description="MLflow: the run's experiment.")
    run_id: str | None = Field(None, description="MLflow or W&B: the run's id.")
    run_dir: str | None = Field(None, description="W&B: the run's local folder.")
    url: str | None = Field(None, description="W&B online: the run's page.")
    last_step: int = Field(0, description="The last step sent to it.")
    ended: bool = Field(
        False,
        description="The job has ended and its run is closed (MLflow: FINISHED, FAILED or "
        "KILLED by the job's status; W&B: finished with exit code 0, or 1 if the job did not "
        "complete). Every step is sent before the job's status changes; closing follows.",
    )
    error: str | None = Field(
        None, description="Its last failure, until it works again (the job goes on without it)."
    )


class PostTrainingJobStatusResponse(BaseModel):
    job_uuid: str
    status: JobStatus
    model: str
    method: Literal["sft", "dpo", "grpo"] = "sft"
    algorithm: Literal["LoRA", "full"]
    scheduled_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    resources_allocated: dict[str, JsonValue] | None = None
    checkpoints: list[Checkpoint] = []
    progress: JobProgress = JobProgress()
    error: str | None = None
    fine_tuned_model: str | None = None
    metadata: dict[str, str] = {}
    provider_id: str | None = Field(None, description="The provider running the job.")
    unreachable: str | None = Field(
        None,
        description="Why the server running the job cannot be reached now (status `unknown`: "
        "the job has not failed; it is read again when that server answers).",
    )
    estimate: TrainingEstimate | None = Field(
        None, description="What the job was estimated to take when it was created."
    )
    attempts: list[JobAttempt] = Field(
        [], description="Each run of its worker: retries after a stall, a lost worker, ..."
    )
    trackers: list[TrackerRun] = Field(
        [], description="Where its experiment trackers' runs are, once the job has started."
    )
    request: TrainingRequest | None = Field(
        None, description="The request the job runs, its defaults filled in."
    )


class PostTrainingJobArtifactsResponse(BaseModel):
    job_uuid: str
    checkpoints: list[Checkpoint]


class StepMetrics(BaseModel):
    step: int
    epoch: int
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = Field(None, description="Real tokens: padding excluded.")
    tokens: int | None = Field(None, description="Real tokens in the step's batches.")
    step_seconds: float | None = None
    validation_loss: float | None = None
    rewards_chosen: float | None = Field(None, description="DPO: mean beta * log-ratio, chosen.")
    rewards_rejected: float | None = Field(None, description="DPO: the same for rejected.")
    reward_margin: float | None = Field(None, description="DPO: chosen minus rejected reward.")
    reward_accuracy: float | None = Field(None, description="DPO: pairs ranked right.")
    validation_reward_margin: float | None = None
    validation_reward_accuracy: float | None = None
    reward_mean: float | None = Field(None, description="GRPO: mean grader score of the step.")
    reward_std: float | None = Field(None, description="GRPO: its standard deviation.")
    rewards_by_grader: dict[str, float] | None = Field(
        None, description="GRPO: mean score of each named sub-grader (a multi grader's)."
    )
    grader_errors: int | None = Field(
        None, description="GRPO: answers the grader failed on (each scored 0)."
    )
    zero_variance_groups: float | None = Field(
        None, description="GRPO: fraction of groups whose answers all scored the same."
    )
    kl: float | None = Field(None, description="GRPO: mean per-token KL to the starting model.")
    clip_fraction: float | None = Field(
        None, description="GRPO: fraction of answer tokens whose ratio was clipped."
    )
    completion_length: float | None = Field(None, description="GRPO: mean answer tokens.")
    sampling_tokens_per_second: float | None = Field(
        None, description="GRPO: answer tokens sampled per second."
    )
    sampling_seconds: float | None = None
    training_tokens_per_second: float | None = Field(
        None, description="GRPO: tokens (prompts and answers) through the loss per second."
    )
    validation_reward: float | None = Field(
        None, description="GRPO: mean grader score of one answer per held-out prompt."
    )
    timestamp: float


class JobMetricsResponse(BaseModel):
    job_uuid: str
    data: list[StepMetrics]


class JobLogsResponse(BaseModel):
    job_uuid: str
    lines: list[str]


class JobEvent(BaseModel):
    """One event of a job's stream: a log line, a metrics line, or its status."""

    type: Literal["log", "metrics", "status"]
    log: str | None = None
    metrics: StepMetrics | None = None
    status: PostTrainingJobStatusResponse | None = None


class RowProblem(BaseModel):
    row: int
    message: str


class TokenStats(BaseModel):
    min: int
    max: int
    mean: float
    p50: int
    p95: int


class PreflightResponse(BaseModel):
    rows: int
    validation_rows: int
    token_lengths: TokenStats
    trained_tokens: int
    truncated_rows: int
    max_seq_len: int
    steps_per_epoch: int
    total_steps: int
    example: str = Field(description="One rendered example; trained tokens are inside [[ ]].")
    errors: list[RowProblem]
    estimate: TrainingEstimate | None = Field(
        None,
        description="Work and memory on this device; time and cost where a calibration of "
        "the same setting is cached (POST /v1/post-training/estimate runs one).",
    )
