"""Graders: how a sampled answer is scored, in OpenAI's shapes (`openai.types.graders`).

A grader reads the dataset row (`{{item.answer}}`) and the sample (`{{sample.output_text}}`,
`{{sample.output_json}}`) through templates and answers a score. OpenAI's kinds are here
(`string_check`, `text_similarity`, `score_model`, `python`, `multi`) with two of our own:
`regex` and `json_schema` matchers. `llama_post.graders` runs them; `label_model` is not served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from llama_post.schema import StrictModel

GraderName = Annotated[str, Field(min_length=1, max_length=256)]
Template = Annotated[
    str,
    Field(
        max_length=65536,
        description="Text with templates: `{{item.<field>}}`, `{{sample.output_text}}`.",
    ),
]


class StringCheckGrader(StrictModel):
    """1 when the check holds, else 0: `eq`/`ne` compare whole strings, `like` is "contains
    the reference" and `ilike` the same ignoring case."""

    type: Literal["string_check"]
    name: GraderName
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


SimilarityMetric = Literal[
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]


class TextSimilarityGrader(StrictModel):
    """A similarity in [0, 1] between `input` and `reference`. `cosine` (an embedding model)
    and `meteor` without NLTK's WordNet data installed are refused by name."""

    type: Literal["text_similarity"]
    name: GraderName
    input: Template
    reference: Template
    evaluation_metric: SimilarityMetric
    pass_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="When set, the score is 1 at or above it and 0 below; else the similarity.",
    )


class InputText(StrictModel):
    type: Literal["input_text"]
    text: Template


class OutputText(StrictModel):
    type: Literal["output_text"]
    text: Template


TextPart = Annotated[InputText | OutputText, Field(discriminator="type")]


class GraderMessage(StrictModel):
    """A message to the scoring model; its text may hold templates. Images and audio are not
    served (a 422 naming the part's `type`)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: Template | list[TextPart]
    type: Literal["message"] | None = None


class ScoreSampling(StrictModel):
    """OpenAI's `sampling_params`. `reasoning_effort` is refused: the models served here do
    not reason on request."""

    max_completions_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    reasoning_effort: str | None = None


class ScoreModelGrader(StrictModel):
    """A model served by this stack reads the rendered messages and answers a number; the
    first number in its answer is the score, which must lie in `range` (else the sample's
    score is 0 with the error)."""

    type: Literal["score_model"]
    name: GraderName
    model: str = Field(min_length=1, max_length=256)
    input: list[GraderMessage] = Field(min_length=1, max_length=64)
    range: list[float] | None = Field(
        None, min_length=2, max_length=2, description="[low, high]; [0, 1] if unset."
    )
    sampling_params: ScoreSampling | None = None


class PythonGrader(StrictModel):
    """`source` defines `grade(sample: dict, item: dict) -> float`, run in a sandboxed process
    (CPU, memory and time limits, no network) where the distribution enables it."""

    type: Literal["python"]
    name: GraderName
    source: str = Field(min_length=1, max_length=262144)
    image_tag: str | None = Field(
        None, description="OpenAI's image; here only null or `default` (this server's Python)."
    )


class RegexGrader(StrictModel):
    """1 when `pattern` matches somewhere in the rendered `input` (anchor it with `^...$` to
    match the whole), else 0."""

    type: Literal["regex"]
    name: GraderName
    input: Template
    pattern: str = Field(min_length=1, max_length=4096)


class JsonSchemaGrader(StrictModel):
    """1 when the rendered `input` is JSON valid against `schema` (JSON Schema 2020-12), else 0."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True)

    type: Literal["json_schema"]
    name: GraderName
    input: Template
    json_schema: dict[str, Any] = Field(alias="schema")


SingleGrader = Annotated[
    StringCheckGrader
    | TextSimilarityGrader
    | ScoreModelGrader
    | PythonGrader
    | RegexGrader
    | JsonSchemaGrader,
    Field(discriminator="type"),
]


class MultiGrader(StrictModel):
    """Named graders combined by a formula over their names: numbers, `+ - * / ^` (`**`),
    parentheses and `min max abs floor ceil exp sqrt log`."""

    type: Literal["multi"]
    name: GraderName
    graders: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], SingleGrader]
    calculate_output: str = Field(min_length=1, max_length=4096)


Grader = Annotated[
    StringCheckGrader
    | TextSimilarityGrader
    | ScoreModelGrader
    | PythonGrader
    | RegexGrader
    | JsonSchemaGrader
    | MultiGrader,
    Field(discriminator="type"),
]


# -- trying a grader on one row: /v1/post-training/graders/run|validate and OpenAI's alpha routes --


class GraderRunRequest(StrictModel):
    """OpenAI's `graders.run`: one row (`item`) and one answer (`model_sample`, read as
    `sample.output_text`, and as `sample.output_json` when it is JSON)."""

    grader: Grader
    model_sample: str = Field(max_length=1_048_576)
    item: dict[str, Any] | None = Field(None, description="The row; `{}` if unset.")


class GraderRunErrors(BaseModel):
    """OpenAI's error flags, one set per kind of failure; `message` (ours) says what failed."""

    model_config = ConfigDict(protected_namespaces=())

    formula_parse_error: bool = False
    invalid_variable_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_server_error: bool = False
    model_grader_server_error_details: str | None = None
    other_error: bool = False
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    message: str | None = Field(None, description="The error, in words (null when none).")


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: GraderRunErrors
    execution_time: float = Field(description="Seconds spent grading.")
    scores: dict[str, float] = Field(description="Each grader's score, by name.")
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GraderRunResponse(BaseModel):
    """The reward (0 when grading failed: `metadata.errors` says why) and, for `multi`, each
    named grader's score."""

    model_config = ConfigDict(protected_namespaces=())

    reward: float
    sub_rewards: dict[str, float]
    metadata: GraderRunMetadata
    model_grader_token_usage_per_model: dict[str, int] = {}


class GraderValidateRequest(StrictModel):
    grader: Grader


class GraderValidateResponse(BaseModel):
    """The grader as it will run (defaults filled in)."""

    grader: Grader


class GraderRoutes(Protocol):
    """What serves the grader routes (the stack's `GraderService`)."""

    async def run_grader(self, request: GraderRunRequest) -> GraderRunResponse: ...

    async def validate_grader(self, request: GraderValidateRequest) -> GraderValidateResponse: ...


@dataclass(frozen=True)
class GraderSettings:
    """What the distribution allows (run.yaml's `graders:`): the python grader is off unless
    enabled, and then limited per sample."""

    python_enabled: bool = False
    python_cpu_seconds: float = 5
    python_memory_mb: int = 512
    python_timeout_s: float = 10
