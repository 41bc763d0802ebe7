"""Post-training requests, following Llama Stack's post-training API: the configs they are made
of are in `configs.py`, the job records they start in `jobs.py`.

Every field is honoured or refused by name: a value the trainer cannot honour (a quantized base,
activation offloading, a hyperparameter search) is a 400 naming the field, never ignored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, JsonValue, model_validator

from llama_post.apis.post_training.configs import (
    BASE_LR,
    AlgorithmConfig,
    ConfigModel,
    FullFinetuningConfig,
    LoggerConfig,
    LoraFinetuningConfig,
    OptimizerConfig,
    SupervisionConfig,
    TrainingConfig,
    TrainingEvaluations,
)
from llama_post.apis.post_training.configs import Phase as Phase  # re-exported: their old home
from llama_post.apis.post_training.configs import StallSeconds as StallSeconds
from llama_post.apis.post_training.graders import Grader
from llama_post.errors import InvalidRequestError
from llama_post.schema import required_in_spec

JOB_UUID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
JobUuid = Annotated[str, Field(pattern=JOB_UUID_PATTERN, examples=["sft-0123456789abcdef"])]


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
    evaluations: TrainingEvaluations | None = Field(
        None, description="Benchmarks run on its checkpoints and at its end."
    )
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
