"""OpenAI's Evals API (`client.evals`, `client.evals.runs`, `...runs.output_items`) in the SDK's
shapes, served over the native Evaluations API: an eval is a data source schema plus testing
criteria (the graders llama-post runs); a run is a model over that run's rows, graded.

Served: a `custom` data source config (its `item_schema` checks every row), criteria of the
kinds `llama_post.graders` runs (a criterion's `pass_threshold` is its native threshold), and
`completions` runs over `file_content` or a `file_id` of JSONL, their messages a `template`
of `{{item.<field>}}` or the rows' own `item.messages`. Logs and stored completions are not
kept here, so those configs and sources are refused by field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_post.apis.post_training.graders import (
    JsonSchemaGrader,
    MultiGrader,
    PythonGrader,
    RegexGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from llama_post.schema import StrictModel

EvalId = Annotated[str, Field(pattern=r"^eval_[0-9a-f]{24}$", examples=["eval_" + "0" * 24])]
RunId = Annotated[str, Field(pattern=r"^evalrun_[0-9a-f]{24}$", examples=["evalrun_" + "0" * 24])]
OutputItemId = Annotated[
    str,
    Field(pattern=r"^outputitem_[0-9a-f]{24}_[0-9]+$", examples=["outputitem_" + "0" * 24 + "_0"]),
]
Metadata = dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]]


class CustomDataSourceConfig(StrictModel):
    type: Literal["custom"]
    item_schema: dict[str, Any] = Field(description="The JSON Schema every row's `item` fits.")
    include_sample_schema: bool = False


class LogsDataSourceConfig(StrictModel):
    """Not served: there are no stored logs here (a 400 naming the field)."""

    type: Literal["logs", "stored_completions"]
    metadata: dict[str, Any] | None = None


DataSourceConfig = Annotated[
    CustomDataSourceConfig | LogsDataSourceConfig, Field(discriminator="type")
]


class PythonCriterion(PythonGrader):
    pass_threshold: float | None = Field(None, ge=0, le=1)


class ScoreModelCriterion(ScoreModelGrader):
    pass_threshold: float | None = Field(None, ge=0, le=1)


TestingCriterion = Annotated[
    StringCheckGrader
    | TextSimilarityGrader
    | ScoreModelCriterion
    | PythonCriterion
    | RegexGrader
    | JsonSchemaGrader
    | MultiGrader,
    Field(discriminator="type"),
]


class CreateEvalRequest(StrictModel):
    name: str | None = Field(None, max_length=256)
    data_source_config: DataSourceConfig
    testing_criteria: list[TestingCriterion] = Field(min_length=1, max_length=16)
    metadata: Metadata | None = Field(None, max_length=16)


class UpdateEvalRequest(StrictModel):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = Field(None, max_length=16)


class Eval(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    id: str
    object: Literal["eval"] = "eval"
    name: str
    created_at: int
    data_source_config: dict[str, Any] = Field(description="`type` and the `schema` of a row.")
    testing_criteria: list[TestingCriterion]
    metadata: dict[str, str] | None = None


class ListEvalsRequest(StrictModel):
    after: str | None = None
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "asc"
    order_by: Literal["created_at", "updated_at"] = "created_at"


class ListEvalsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Eval]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeleteEvalResponse(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


# -- runs -------------------------------------------------------------------------------------


class SourceRow(StrictModel):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(StrictModel):
    type: Literal["file_content"]
    content: list[SourceRow] = Field(min_length=1)


class FileIdSource(StrictModel):
    """A JSONL file of the Files API: each line `{"item": {...}}` (or the item itself)."""

    type: Literal["file_id"]
    id: str = Field(min_length=1)


class StoredCompletionsSource(BaseModel):
    """Not served: completions are not stored here (a 400 naming the field)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["stored_completions", "responses"]


RunSource = Annotated[
    FileContentSource | FileIdSource | StoredCompletionsSource, Field(discriminator="type")
]


class TextPart(StrictModel):
    type: Literal["input_text", "output_text"]
    text: str


class TemplateMessage(StrictModel):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | TextPart
    type: Literal["message"] | None = None


class TemplateInput(StrictModel):
    type: Literal["template"]
    template: list[TemplateMessage] = Field(min_length=1, max_length=64)


class ItemReferenceInput(StrictModel):
    type: Literal["item_reference"]
    item_reference: str = Field(description="Only `item.messages` here: each row's chat.")


InputMessages = Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")]


class RunSampling(StrictModel):
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None


class CompletionsRunDataSource(StrictModel):
    type: Literal["completions"]
    source: RunSource
    input_messages: InputMessages | None = None
    model: str | None = Field(None, max_length=256)
    sampling_params: RunSampling | None = None


class OtherRunDataSource(BaseModel):
    """Runs that only grade given samples (`jsonl`) or read logs (`responses`): not served."""

    model_config = ConfigDict(extra="allow")

    type: Literal["jsonl", "responses"]


RunDataSource = Annotated[
    CompletionsRunDataSource | OtherRunDataSource, Field(discriminator="type")
]


class CreateEvalRunRequest(StrictModel):
    name: str | None = Field(None, max_length=256)
    data_source: RunDataSource
    metadata: Metadata | None = Field(None, max_length=16)


class ResultCounts(BaseModel):
    total: int
    errored: int
    failed: int
    passed: int


class PerTestingCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class PerModelUsage(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


class EvalApiError(BaseModel):
    code: str
    message: str


RunStatus = Literal["queued", "in_progress", "completed", "canceled", "failed"]


class EvalRun(BaseModel):
    id: str
    object: Literal["eval.run"] = "eval.run"
    eval_id: str
    name: str
    status: RunStatus
    model: str
    created_at: int
    data_source: CompletionsRunDataSource
    error: EvalApiError | None = None
    metadata: dict[str, str] | None = None
    report_url: str
    result_counts: ResultCounts
    per_model_usage: list[PerModelUsage]
    per_testing_criteria_results: list[PerTestingCriteriaResult]
    evaluation_id: str = Field(description="The native evaluation job that runs it (ours).")


class ListEvalRunsRequest(StrictModel):
    after: str | None = None
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "asc"
    status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None


class ListEvalRunsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalRun]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeleteEvalRunResponse(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class OutputItemResult(BaseModel):
    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None
    error: str | None = None


class OutputItemSample(BaseModel):
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    finish_reason: str | None
    model: str
    usage: dict[str, int] | None
    error: EvalApiError | None
    temperature: float | None
    max_completion_tokens: int | None
    top_p: float | None
    seed: int | None


class OutputItem(BaseModel):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    eval_id: str
    run_id: str
    created_at: int
    status: Literal["pass", "fail"]
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[OutputItemResult]
    sample: OutputItemSample


class ListOutputItemsRequest(StrictModel):
    after: str | None = None
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "asc"
    status: Literal["pass", "fail"] | None = None


class ListOutputItemsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OutputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
