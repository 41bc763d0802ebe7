"""Benchmarks and evaluation jobs: a dataset and graders; one model run over them.

A benchmark's rows become chat requests: by its `input_messages` templates (`{{item.<field>}}`,
rendered as graders render theirs), else by the row's own shape (`messages`, Llama Stack's
`chat_completion_input` or `input_query`, `prompt`). Each answer is graded by every grader; a
grader passes a row when its score reaches `pass_threshold` (1 unless set).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, JsonValue

from llama_post.apis.post_training.graders import Grader, Template
from llama_post.schema import StrictModel

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
BenchmarkId = Annotated[str, Field(pattern=ID_PATTERN, examples=["held-out-qa"])]
EVALUATION_ID_PATTERN = r"^evaljob-[0-9a-f]{24}$"
EvaluationId = Annotated[
    str, Field(pattern=EVALUATION_ID_PATTERN, examples=["evaljob-0123456789abcdef01234567"])
]
EvaluationStatus = Literal["queued", "running", "cancelling", "completed", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class InputMessage(StrictModel):
    """A message sent to the model for each row; its content may hold `{{item.<field>}}`."""

    role: Literal["system", "user", "assistant", "developer"]
    content: Template


class RegisterBenchmarkRequest(StrictModel):
    benchmark_id: BenchmarkId
    dataset_id: str = Field(min_length=1, max_length=128)
    graders: list[Grader] = Field(
        min_length=1, max_length=16, description="Each scores every row; names are unique."
    )
    input_messages: list[InputMessage] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The messages a row becomes; by the row's own shape if unset (`messages`, "
        "`chat_completion_input`, `input_query`, `prompt`).",
    )
    pass_threshold: float = Field(
        1.0, ge=0, le=1, description="A grader passes a row when its score is at least this."
    )
    pass_thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        {}, description="A grader's own threshold, by its name."
    )
    metadata: dict[str, JsonValue] = {}

    def threshold(self, grader: str) -> float:
        return self.pass_thresholds.get(grader, self.pass_threshold)


class Benchmark(BaseModel):
    benchmark_id: str
    dataset_id: str
    graders: list[Grader]
    input_messages: list[InputMessage] | None
    pass_threshold: float
    pass_thresholds: dict[str, float]
    metadata: dict[str, JsonValue]
    row_count: int
    created_at: int


class ListBenchmarksResponse(BaseModel):
    data: list[Benchmark]


class DeleteBenchmarkResponse(BaseModel):
    benchmark_id: str
    deleted: bool = True


class EvaluationSampling(StrictModel):
    max_tokens: int = Field(64, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0, le=2, description="0 decodes greedily.")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=16)


class CreateEvaluationRequest(StrictModel):
    benchmark_id: BenchmarkId
    model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A base, `ft/<job>`, or any served model; or name a `checkpoint`.",
    )
    checkpoint: str | None = Field(
        None,
        pattern=r"^[^/]+/[^/]+$",
        description="`<job_uuid>/<checkpoint_id>`: a job's checkpoint, served as the model "
        "`ckpt/<job_uuid>/<checkpoint_id>` (registered on first use; a job's final checkpoint "
        "is its `ft/<job_uuid>`).",
    )
    sampling: EvaluationSampling = EvaluationSampling()
    system_message: str | None = Field(
        None, max_length=65536, description="Put before each row's messages."
    )
    max_rows: int | None = Field(None, ge=1, description="The first rows only.")
    concurrency: int = Field(
        8, ge=1, le=256, description="Rows in flight at once, decoded together by the engine."
    )
    metadata: dict[str, JsonValue] = {}


class MetricSummary(BaseModel):
    """One grader's scores over the graded rows: the mean with its standard error and a 95%
    normal interval, and the share of rows that passed with its own interval."""

    count: int
    errors: int = Field(description="Rows whose answer or grading failed (scored 0).")
    mean: float
    stderr: float
    ci95_low: float
    ci95_high: float
    pass_rate: float
    pass_rate_ci95_low: float
    pass_rate_ci95_high: float
    passed: int
    failed: int


class RowCounts(BaseModel):
    total: int = 0
    done: int = 0
    errored: int = Field(0, description="Rows the model could not answer.")
    passed: int = Field(0, description="Rows every grader passed.")


class EvaluationJob(BaseModel):
    evaluation_id: str
    benchmark_id: str
    model: str
    status: EvaluationStatus
    created_at: int
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None
    row_counts: RowCounts
    metrics: dict[str, MetricSummary] = Field(description="By grader name.")
    request: CreateEvaluationRequest


class ListEvaluationsRequest(StrictModel):
    benchmark_id: str | None = None
    job_uuid: str | None = Field(
        None, description="Those a post-training job's `evaluations` started."
    )


class ListEvaluationsResponse(BaseModel):
    data: list[EvaluationJob]


class EvaluationRow(BaseModel):
    """One row's record: what was sent, what came back, each grader's score."""

    index: int
    item: dict[str, Any]
    input: list[dict[str, Any]]
    output: str | None
    finish_reason: str | None = None
    scores: dict[str, float]
    passed: dict[str, bool]
    errors: dict[str, str] = Field(description="By grader name; `inference` when no answer.")
    usage: dict[str, int] | None = None


class EvaluationResultsRequest(StrictModel):
    start_index: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=10000)


class EvaluationResultsResponse(BaseModel):
    data: list[EvaluationRow]
    has_more: bool
    next_start_index: int | None


class EvaluationEvent(BaseModel):
    created_at: float
    level: Literal["info", "warning", "error"]
    message: str


class EvaluationEventsResponse(BaseModel):
    data: list[EvaluationEvent]
