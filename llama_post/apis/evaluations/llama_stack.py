"""Llama Stack's eval family (`/v1/eval/benchmarks...`, under `/v1alpha` for 0.7,
`/v1/scoring/score`, `/v1/scoring-functions`) in llama-stack-client's shapes (0.2 and 0.7 send
the same bodies), served over the native API.

A benchmark's scoring functions are graders of the answer (`sample.output_text`) against the
row's `expected_answer`: `basic::equality` (equal strings) and `basic::subset_of` (the expected
answer inside the answer). Rows become chats by their own shape (`eval/question-answer`:
`chat_completion_input` or `input_query`; `eval/messages-answer`: `messages`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from llama_post.schema import StrictModel

ScoringFunctionId = Literal["basic::equality", "basic::subset_of"]


class LlamaStackRegisterBenchmarkRequest(StrictModel):
    benchmark_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    dataset_id: str = Field(min_length=1, max_length=128)
    scoring_functions: list[ScoringFunctionId] = Field(min_length=1, max_length=16)
    metadata: dict[str, JsonValue] | None = None
    provider_benchmark_id: str | None = None
    provider_id: str | None = None


class LlamaStackBenchmark(BaseModel):
    identifier: str
    provider_resource_id: str
    provider_id: str = "llama-post"
    type: Literal["benchmark"] = "benchmark"
    dataset_id: str
    scoring_functions: list[str]
    metadata: dict[str, JsonValue]


class LlamaStackListBenchmarksResponse(BaseModel):
    data: list[LlamaStackBenchmark]


class GreedyStrategy(StrictModel):
    type: Literal["greedy"]


class TopPStrategy(StrictModel):
    type: Literal["top_p"]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)


class TopKStrategy(StrictModel):
    type: Literal["top_k"]
    top_k: int = Field(ge=1)


class LlamaStackSampling(BaseModel):
    """Llama Stack's `sampling_params`; keys it adds over releases are ignored."""

    model_config = ConfigDict(extra="ignore")

    strategy: Annotated[
        GreedyStrategy | TopPStrategy | TopKStrategy, Field(discriminator="type")
    ] = GreedyStrategy(type="greedy")
    max_tokens: int | None = Field(None, ge=0, le=8192)
    repetition_penalty: float | None = None
    stop: list[str] | None = None


class SystemMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system"]
    content: str


class ModelCandidate(StrictModel):
    type: Literal["model"] = Field("model", description="0.7's client may leave it out.")
    model: str = Field(min_length=1, max_length=256)
    sampling_params: LlamaStackSampling = LlamaStackSampling()
    system_message: SystemMessage | None = None


class AgentCandidate(BaseModel):
    """Not served: agents are not part of llama-post (a 400 naming the field)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["agent"]


class BenchmarkConfig(StrictModel):
    eval_candidate: ModelCandidate | AgentCandidate
    scoring_params: dict[str, dict[str, Any]] = {}
    num_examples: int | None = Field(None, ge=1)


class RunEvalRequest(StrictModel):
    benchmark_config: BenchmarkConfig


JobStatus = Literal["scheduled", "in_progress", "completed", "failed", "cancelled"]


class LlamaStackJob(BaseModel):
    job_id: str
    status: JobStatus


class ScoringResult(BaseModel):
    score_rows: list[dict[str, JsonValue]]
    aggregated_results: dict[str, JsonValue]


class EvaluateResponse(BaseModel):
    generations: list[dict[str, JsonValue]]
    scores: dict[str, ScoringResult]


class ScoreRequest(StrictModel):
    input_rows: list[dict[str, JsonValue]] = Field(
        min_length=1,
        max_length=10000,
        description="Each with `generated_answer` and the "
        "fields its functions read (`expected_answer`).",
    )
    scoring_functions: dict[ScoringFunctionId, dict[str, Any] | None] = Field(
        min_length=1, max_length=16
    )


class ScoreResponse(BaseModel):
    results: dict[str, ScoringResult]


class ScoringFnReturnType(BaseModel):
    type: str


class ScoringFn(BaseModel):
    identifier: str
    provider_resource_id: str
    provider_id: str = "llama-post"
    type: Literal["scoring_function"] = "scoring_function"
    description: str
    return_type: ScoringFnReturnType = ScoringFnReturnType(type="number")
    params: dict[str, Any] | None = None
    metadata: dict[str, JsonValue] = {}


class ListScoringFunctionsResponse(BaseModel):
    data: list[ScoringFn]
