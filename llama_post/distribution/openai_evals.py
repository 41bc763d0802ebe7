"""OpenAI's Evals API over the native Evaluations API, installed by the stack like
`OpenAIFineTuning`: it stores only what OpenAI's objects add (an eval's name, data source
config and criteria; a run's name, data source and the native job that runs it) in the stack's
`openai_evals.db`. A run becomes native objects of the caller's: a dataset of its rows
(`eval/question-answer`, which keeps any object), a benchmark of the eval's criteria and the
run's message template, and an evaluation job; its status, counts and output items are read
back from that job.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from llama_post.apis.datasets import DatasetPurpose, RegisterDatasetRequest
from llama_post.apis.evaluations import (
    CreateEvaluationRequest,
    EvaluationJob,
    EvaluationResultsRequest,
    EvaluationRow,
    InputMessage,
    RegisterBenchmarkRequest,
)
from llama_post.apis.evaluations.openai_evals import (
    CompletionsRunDataSource,
    CreateEvalRequest,
    CreateEvalRunRequest,
    CustomDataSourceConfig,
    DeleteEvalResponse,
    DeleteEvalRunResponse,
    Eval,
    EvalApiError,
    EvalRun,
    FileContentSource,
    FileIdSource,
    ItemReferenceInput,
    ListEvalRunsRequest,
    ListEvalRunsResponse,
    ListEvalsRequest,
    ListEvalsResponse,
    ListOutputItemsRequest,
    ListOutputItemsResponse,
    OutputItem,
    OutputItemResult,
    OutputItemSample,
    PerModelUsage,
    PerTestingCriteriaResult,
    ResultCounts,
    RunStatus,
    TestingCriterion,
    UpdateEvalRequest,
)
from llama_post.apis.post_training.graders import Grader
from llama_post.errors import ErrorDetail, InvalidRequestError, NotFoundError
from llama_post.storage import Database

CRITERIA: TypeAdapter[list[TestingCriterion]] = TypeAdapter(list[TestingCriterion])
GRADER: TypeAdapter[Grader] = TypeAdapter(Grader)
MAX_ROWS = 50_000
STATUS: dict[str, RunStatus] = {
    "queued": "queued",
    "running": "in_progress",
    "cancelling": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "canceled",
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS evals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    criteria TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    eval_id TEXT NOT NULL,
    name TEXT NOT NULL,
    evaluation_id TEXT NOT NULL,
    data_source TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL
);
"""


class OpenAIEvals:
    """`native` is the guarded native service, `datasets` and `files` the guarded APIs."""

    def __init__(self, native: Any, datasets: Any, files: Any, storage_dir: Path) -> None:
        self.native = native
        self.datasets = datasets
        self.files = files
        self.db = Database(storage_dir / "openai_evals.db", SCHEMA)

    async def shutdown(self) -> None:
        await self.native.shutdown()
        self.db.close()

    # -- evals ---------------------------------------------------------------------------------

    async def create_eval(self, request: CreateEvalRequest) -> Eval:
        config = request.data_source_config
        if not isinstance(config, CustomDataSourceConfig):
            raise InvalidRequestError(
                f"data_source_config.type: {config.type!r} reads stored logs, which are not kept "
                "here; use `custom` with an `item_schema`",
                param="data_source_config.type",
            )
        _check_schema(config.item_schema)
        _unique_names(request.testing_criteria)
        for i, criterion in enumerate(request.testing_criteria):  # built as the native will
            await self.native.graders.runner(_grader(criterion), f"testing_criteria[{i}]")
        eval_id = f"eval_{secrets.token_hex(12)}"
        schema = {
            "type": "object",
            "properties": {"item": config.item_schema}
            | ({"sample": SAMPLE_SCHEMA} if config.include_sample_schema else {}),
            "required": ["item", *(["sample"] if config.include_sample_schema else [])],
        }
        self.db.execute(
            "INSERT INTO evals (id, name, config, criteria, metadata, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                eval_id,
                request.name or eval_id,
                json.dumps({"type": "custom", "schema": schema}),
                CRITERIA.dump_json(request.testing_criteria, by_alias=True).decode(),
                json.dumps(request.metadata) if request.metadata is not None else None,
                int(time.time()),
            ),
        )
        return await self.get_eval(eval_id)

    async def get_eval(self, eval_id: str) -> Eval:
        row = self.db.one("SELECT * FROM evals WHERE id = ?", (eval_id,))
        if row is None:
            raise NotFoundError(f"no eval {eval_id!r}", param="eval_id")
        return Eval(
            id=row["id"],
            name=row["name"],
            created_at=row["created_at"],
            data_source_config=json.loads(row["config"]),
            testing_criteria=CRITERIA.validate_json(row["criteria"]),
            metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        )

    async def list_evals(self, request: ListEvalsRequest) -> ListEvalsResponse:
        ids = [r["id"] for r in self.db.all("SELECT id FROM evals ORDER BY seq")]
        page, more = _page(ids, request.after, request.limit, request.order, "eval")
        data = [await self.get_eval(i) for i in page]
        return ListEvalsResponse(
            data=data, first_id=_first(page), last_id=_last(page), has_more=more
        )

    async def update_eval(self, eval_id: str, request: UpdateEvalRequest) -> Eval:
        await self.get_eval(eval_id)
        if request.name is not None:
            self.db.execute("UPDATE evals SET name = ? WHERE id = ?", (request.name, eval_id))
        if request.metadata is not None:
            metadata = json.dumps(request.metadata)
            self.db.execute("UPDATE evals SET metadata = ? WHERE id = ?", (metadata, eval_id))
        return await self.get_eval(eval_id)

    async def delete_eval(self, eval_id: str) -> DeleteEvalResponse:
        await self.get_eval(eval_id)
        self.db.execute("DELETE FROM evals WHERE id = ?", (eval_id,))
        return DeleteEvalResponse(eval_id=eval_id)

    # -- runs ----------------------------------------------------------------------------------

    async def create_eval_run(self, eval_id: str, request: CreateEvalRunRequest) -> EvalRun:
        found = await self.get_eval(eval_id)
        source = request.data_source
        if not isinstance(source, CompletionsRunDataSource):
            raise InvalidRequestError(
                f"data_source.type: {source.type!r} is not served; a run here samples a model "
                "(`completions`)",
                param="data_source.type",
            )
        if source.model is None:
            raise InvalidRequestError(
                "data_source.model: a completions run names the model to sample",
                param="data_source.model",
            )
        rows = await self._items(source)
        _check_items(rows, found.data_source_config["schema"]["properties"]["item"])
        run_id = f"evalrun_{secrets.token_hex(12)}"
        dataset = await self.datasets.register_dataset(
            RegisterDatasetRequest(
                dataset_id=f"{run_id}-items",
                purpose=DatasetPurpose.eval_question_answer,
                source={"type": "rows", "rows": rows},
                metadata={"eval_id": eval_id, "run_id": run_id},
            )
        )
        criteria = found.testing_criteria
        await self.native.register_benchmark(
            RegisterBenchmarkRequest(
                benchmark_id=run_id,
                dataset_id=dataset.identifier,
                graders=[_grader(c) for c in criteria],
                input_messages=_messages(source),
                pass_thresholds={
                    c.name: threshold
                    for c in criteria
                    if (threshold := getattr(c, "pass_threshold", None)) is not None
                },
                metadata={"eval_id": eval_id},
            )
        )
        sampling = source.sampling_params
        knobs: dict[str, Any] = {"temperature": 0.0}
        if sampling is not None:
            knobs |= {
                k: v
                for k, v in {
                    "max_tokens": sampling.max_completion_tokens,
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "seed": sampling.seed,
                }.items()
                if v is not None
            }
        job = await self.native.create_evaluation(
            CreateEvaluationRequest.model_validate(
                {"benchmark_id": run_id, "model": source.model, "sampling": knobs}
            )
        )
        self.db.execute(
            "INSERT INTO runs (id, eval_id, name, evaluation_id, data_source, metadata, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                eval_id,
                request.name or run_id,
                job.evaluation_id,
                source.model_dump_json(),
                json.dumps(request.metadata) if request.metadata is not None else None,
                int(time.time()),
            ),
        )
        return await self.get_eval_run(eval_id, run_id)

    async def _items(self, source: CompletionsRunDataSource) -> list[dict[str, Any]]:
        if isinstance(source.source, FileContentSource):
            return [r.item for r in source.source.content]
        if not isinstance(source.source, FileIdSource):
            raise InvalidRequestError(
                f"data_source.source.type: {source.source.type!r} is not kept here; give the "
                "rows as `file_content` or a `file_id`",
                param="data_source.source.type",
            )
        file_id = source.source.id
        if self.files is None:
            raise InvalidRequestError(
                "data_source.source: no Files API is served here; give `file_content`",
                param="data_source.source",
            )
        try:
            content = await self.files.retrieve_file_content(file_id)
        except NotFoundError:
            raise NotFoundError(
                f"data_source.source.id: no file {file_id!r}", param="data_source.source.id"
            ) from None
        data = b"".join([chunk async for chunk in content.chunks])
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise InvalidRequestError(
                    f"data_source.source.id: line {number} of {file_id} is not JSON: {e}",
                    param="data_source.source.id",
                ) from e
            if not isinstance(record, dict):
                raise InvalidRequestError(
                    f"data_source.source.id: line {number} of {file_id} is not a JSON object",
                    param="data_source.source.id",
                )
            item = record.get("item", record)
            rows.append(item if isinstance(item, dict) else record)
            if len(rows) > MAX_ROWS:
                raise InvalidRequestError(
                    f"data_source.source.id: more than {MAX_ROWS} rows",
                    param="data_source.source.id",
                )
        if not rows:
            raise InvalidRequestError(
                f"data_source.source.id: {file_id} holds no rows", param="data_source.source.id"
            )
        return rows

    def _run_row(self, eval_id: str, run_id: str) -> sqlite3.Row:
        row = self.db.one("SELECT * FROM runs WHERE id = ? AND eval_id = ?", (run_id, eval_id))
        if row is None:
            raise NotFoundError(f"no run {run_id!r} of eval {eval_id!r}", param="run_id")
        return row

    async def get_eval_run(self, eval_id: str, run_id: str) -> EvalRun:
        await self.get_eval(eval_id)
        row = self._run_row(eval_id, run_id)
        job: EvaluationJob = await self.native.get_evaluation(row["evaluation_id"])
        results = await self._results(row["evaluation_id"]) if job.row_counts.done else []
        source = CompletionsRunDataSource.model_validate_json(row["data_source"])
        errored = sum(1 for r in results if r.errors)
        passed = sum(1 for r in results if not r.errors and all(r.passed.values()))
        usage = [r.usage for r in results if r.usage]
        return EvalRun(
            id=run_id,
            eval_id=eval_id,
            name=row["name"],
            status=STATUS[job.status],
            model=job.model,
            created_at=row["created_at"],
            data_source=source,
            error=EvalApiError(code="server_error", message=job.error) if job.error else None,
            metadata=json.loads(row["metadata"]) if row["metadata"] else None,
            report_url=f"/v1/evals/{eval_id}/runs/{run_id}/output_items",
            result_counts=ResultCounts(
                total=job.row_counts.total,
                errored=errored,
                failed=len(results) - errored - passed,
                passed=passed,
            ),
            per_model_usage=[
                PerModelUsage(
                    model_name=job.model,
                    invocation_count=len(usage),
                    prompt_tokens=sum(u["prompt_tokens"] for u in usage),
                    completion_tokens=sum(u["completion_tokens"] for u in usage),
                    total_tokens=sum(u["total_tokens"] for u in usage),
                )
            ]
            if usage
            else [],
            per_testing_criteria_results=[
                PerTestingCriteriaResult(testing_criteria=name, passed=m.passed, failed=m.failed)
                for name, m in job.metrics.items()
            ],
            evaluation_id=job.evaluation_id,
        )

    async def _results(self, evaluation_id: str) -> list[EvaluationRow]:
        rows: list[EvaluationRow] = []
        start: int | None = 0
        while start is not None:
            page = await self.native.get_evaluation_results(
                evaluation_id, EvaluationResultsRequest(start_index=start, limit=10000)
            )
            rows += page.data
            start = page.next_start_index
        return rows

    async def list_eval_runs(
        self, eval_id: str, request: ListEvalRunsRequest
    ) -> ListEvalRunsResponse:
        await self.get_eval(eval_id)
        ids = [
            r["id"]
            for r in self.db.all("SELECT id FROM runs WHERE eval_id = ? ORDER BY seq", (eval_id,))
        ]
        runs = [await self.get_eval_run(eval_id, i) for i in ids]
        if request.status is not None:
            runs = [r for r in runs if r.status == request.status]
        page, more = _page([r.id for r in runs], request.after, request.limit, request.order, "run")
        by_id = {r.id: r for r in runs}
        return ListEvalRunsResponse(
            data=[by_id[i] for i in page], first_id=_first(page), last_id=_last(page), has_more=more
        )

    async def cancel_eval_run(self, eval_id: str, run_id: str) -> EvalRun:
        row = self._run_row(eval_id, run_id)
        job = await self.native.get_evaluation(row["evaluation_id"])
        if job.status not in ("completed", "failed", "cancelled"):
            await self.native.cancel_evaluation(row["evaluation_id"])
        return await self.get_eval_run(eval_id, run_id)

    async def delete_eval_run(self, eval_id: str, run_id: str) -> DeleteEvalRunResponse:
        await self.cancel_eval_run(eval_id, run_id)
        self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return DeleteEvalRunResponse(run_id=run_id)

    async def list_eval_run_output_items(
        self, eval_id: str, run_id: str, request: ListOutputItemsRequest
    ) -> ListOutputItemsResponse:
        run = await self.get_eval_run(eval_id, run_id)
        types = {c.name: c.type for c in (await self.get_eval(eval_id)).testing_criteria}
        items = [_item(run, r, types) for r in await self._results(run.evaluation_id)]
        if request.status is not None:
            items = [i for i in items if i.status == request.status]
        page, more = _page(
            [i.id for i in items], request.after, request.limit, request.order, "output item"
        )
        by_id = {i.id: i for i in items}
        return ListOutputItemsResponse(
            data=[by_id[i] for i in page], first_id=_first(page), last_id=_last(page), has_more=more
        )

    async def get_eval_run_output_item(
        self, eval_id: str, run_id: str, output_item_id: str
    ) -> OutputItem:
        run = await self.get_eval_run(eval_id, run_id)
        types = {c.name: c.type for c in (await self.get_eval(eval_id)).testing_criteria}
        for result in await self._results(run.evaluation_id):
            item = _item(run, result, types)
            if item.id == output_item_id:
                return item
        raise NotFoundError(f"no output item {output_item_id!r}", param="output_item_id")


SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
    },
}


def _grader(criterion: Any) -> Grader:
    """The native grader of a criterion: its threshold is the benchmark's, not the grader's."""
    dumped = criterion.model_dump(by_alias=True, exclude_none=True)
    # OpenAI's threshold says which scores pass (a text similarity stays the similarity)
    dumped.pop("pass_threshold", None)
    return GRADER.validate_python(dumped)


def _unique_names(criteria: list[Any]) -> None:
    seen: set[str] = set()
    for i, criterion in enumerate(criteria):
        if criterion.name in seen:
            raise InvalidRequestError(
                f"testing_criteria[{i}].name: {criterion.name!r} names two criteria",
                param=f"testing_criteria[{i}].name",
            )
        seen.add(criterion.name)


def _messages(source: CompletionsRunDataSource) -> list[InputMessage] | None:
    given = source.input_messages
    if given is None or isinstance(given, ItemReferenceInput):
        if given is not None and given.item_reference != "item.messages":
            raise InvalidRequestError(
                "data_source.input_messages.item_reference: only `item.messages` (each row's "
                "chat) is served; use a `template` for anything else",
                param="data_source.input_messages.item_reference",
            )
        return None
    return [
        InputMessage(
            role=m.role, content=m.content if isinstance(m.content, str) else m.content.text
        )
        for m in given.template
    ]


def _check_schema(schema: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidRequestError(
            f"data_source_config.item_schema: not a JSON Schema: {e.message}",
            param="data_source_config.item_schema",
        ) from e


def _check_items(rows: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    details = [
        ErrorDetail(row=i, message=next(iter(validator.iter_errors(row))).message)
        for i, row in enumerate(rows)
        if not validator.is_valid(row)
    ]
    if details:
        raise InvalidRequestError(
            f"data_source.source: {len(details)} item(s) do not fit the eval's item_schema; "
            f"row {details[0].row}: {details[0].message}",
            param="data_source.source",
            details=details[:20],
        )


def _page(
    ids: list[str], after: str | None, limit: int, order: str, what: str
) -> tuple[list[str], bool]:
    ordered = ids if order == "asc" else list(reversed(ids))
    if after is not None:
        if after not in ordered:
            raise NotFoundError(f"after: no {what} {after!r}", param="after")
        ordered = ordered[ordered.index(after) + 1 :]
    return ordered[:limit], len(ordered) > limit


def _first(page: list[str]) -> str | None:
    return page[0] if page else None


def _last(page: list[str]) -> str | None:
    return page[-1] if page else None


def _item(run: EvalRun, row: EvaluationRow, types: Mapping[str, str]) -> OutputItem:
    names = [c.testing_criteria for c in run.per_testing_criteria_results]
    sampling = run.data_source.sampling_params
    error = row.errors.get("inference")
    return OutputItem(
        id=f"outputitem_{run.id.removeprefix('evalrun_')}_{row.index}",
        eval_id=run.eval_id,
        run_id=run.id,
        created_at=run.created_at,
        status="pass" if not row.errors and all(row.passed.values()) else "fail",
        datasource_item_id=row.index,
        datasource_item=row.item,
        results=[
            OutputItemResult(
                name=name,
                type=types.get(name, "grader"),
                score=row.scores.get(name, 0.0),
                passed=row.passed.get(name, False),
                error=row.errors.get(name),
            )
            for name in names
        ],
        sample=OutputItemSample(
            input=row.input,
            output=[{"role": "assistant", "content": row.output}] if row.output is not None else [],
            finish_reason=row.finish_reason,
            model=run.model,
            usage=row.usage,
            error=EvalApiError(code="inference_error", message=error) if error else None,
            temperature=sampling.temperature if sampling else None,
            max_completion_tokens=sampling.max_completion_tokens if sampling else None,
            top_p=sampling.top_p if sampling else None,
            seed=sampling.seed if sampling else None,
        ),
    )
