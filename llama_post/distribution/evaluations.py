"""Evaluation jobs, served by the stack over whatever serves Datasets, Models and Inference.

A benchmark (a dataset and graders) is a row of the stack's `evaluations.db`; registering one
reads its dataset's rows and checks that each becomes a chat and that every grader builds, so
bad input is a 400 naming the grader or the row, never a failed job. An evaluation job snapshots
the benchmark and its rows into `storage_dir/evaluations/<id>/` (`EvaluationFolder`) and runs a
task that sends `concurrency` rows at once through the Inference API (so the engine decodes them
together) and hands the answers to one grading loop, which grades what has arrived in one call
per grader (a python grader's batch is one sandbox process) and appends each row's result. The
results on disk are the record of what ran: a server that starts resumes every unfinished job,
which runs only the rows without a result. Cancelling stops the decoding (rows in flight are
dropped); the metrics cover the rows graded. The job runs as its creator (`PRINCIPAL`), so it
uses only the models and graders its creator may.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llama_post.apis.datasets import IterRowsRequest
from llama_post.apis.evaluations import (
    FINAL,
    Benchmark,
    CreateEvaluationRequest,
    DeleteBenchmarkResponse,
    EvaluationEvent,
    EvaluationEventsResponse,
    EvaluationJob,
    EvaluationResultsRequest,
    EvaluationResultsResponse,
    EvaluationRow,
    ListBenchmarksResponse,
    ListEvaluationsRequest,
    ListEvaluationsResponse,
    MetricSummary,
    RegisterBenchmarkRequest,
    RowCounts,
)
from llama_post.apis.evaluations.models import EVALUATION_ID_PATTERN
from llama_post.apis.inference.models import ChatCompletion, ChatCompletionRequest
from llama_post.auth import PRINCIPAL, Principal
from llama_post.distribution.evaluation_rows import (
    EvaluationFolder,
    Prompts,
    serve_checkpoint,
    summarize,
)
from llama_post.distribution.graders import GraderService
from llama_post.distribution.training_evaluations import SCHEMA as TRAINING_SCHEMA
from llama_post.errors import ConflictError, InvalidRequestError, LlamaPostError, NotFoundError
from llama_post.graders import GraderRunner, Sample
from llama_post.graders.templates import GradingError
from llama_post.storage import Database, check_id

log = logging.getLogger(__name__)
EVALUATION_ID = re.compile(EVALUATION_ID_PATTERN)
GRADE_AT_ONCE = 64  # answers graded in one call per grader
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS benchmarks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    benchmark_id TEXT UNIQUE NOT NULL,
    spec TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    evaluation_id TEXT UNIQUE NOT NULL,
    benchmark_id TEXT NOT NULL,
    benchmark TEXT NOT NULL,
    request TEXT NOT NULL,
    owner TEXT,
    admin INTEGER NOT NULL DEFAULT 0,
    key_id TEXT,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    error TEXT,
    summary TEXT
);
"""
    + TRAINING_SCHEMA
)


class EvaluationService:
    """The Evaluations API. `datasets`, `models` and `inference` are the stack's guarded
    implementations; `graders` builds graders as the caller."""

    def __init__(
        self,
        datasets: Any,
        models: Any,
        inference: Any,
        graders: GraderService,
        storage: Path,
        post_training: Callable[[], Any] = lambda: None,
    ) -> None:
        self.datasets = datasets
        self.post_training = post_training  # looked up when needed: it may not be served
        self.models = models
        self.inference = inference
        self.graders = graders
        self.root = storage / "evaluations"
        self.db = Database(storage / "evaluations.db", SCHEMA)
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._work: dict[str, asyncio.Task[None]] = {}
        self._watch: Any = None

    def start(self) -> None:
        """Resume every job a previous server left unfinished."""
        for row in self.db.all(
            "SELECT evaluation_id FROM evaluations WHERE status NOT IN (?, ?, ?)", sorted(FINAL)
        ):
            self._run(row["evaluation_id"])

    def watch_training(self, watch: Any) -> None:
        """Run `watch` (the evaluations post-training jobs name) while the service runs."""
        self._watch = watch
        watch.start()

    async def shutdown(self) -> None:
        if self._watch is not None:
            await self._watch.shutdown()
        runners = list(self._runners.values())
        for task in runners:
            task.cancel()
        for task in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.db.close()

    # -- benchmarks ----------------------------------------------------------------------------

    async def register_benchmark(self, request: RegisterBenchmarkRequest) -> Benchmark:
        if self._benchmark_row(request.benchmark_id) is not None:
            raise ConflictError(
                f"benchmark_id: {request.benchmark_id!r} is taken", param="benchmark_id"
            )
        seen: set[str] = set()
        for i, grader in enumerate(request.graders):
            if grader.name in seen:
                raise InvalidRequestError(
                    f"graders[{i}].name: {grader.name!r} names two graders; names are unique",
                    param=f"graders[{i}].name",
                )
            seen.add(grader.name)
        for name in request.pass_thresholds:
            if name not in seen:
                raise InvalidRequestError(
                    f"pass_thresholds.{name}: no grader is named {name!r}",
                    param=f"pass_thresholds.{name}",
                )
        rows = await self._rows(request.dataset_id, "dataset_id")
        Prompts(request.input_messages).check(rows)
        for i, grader in enumerate(request.graders):
            await self.graders.runner(grader, f"graders[{i}]")
        try:
            self.db.execute(
                "INSERT INTO benchmarks (benchmark_id, spec, row_count, created_at) "
                "VALUES (?, ?, ?, ?)",
                (
                    request.benchmark_id,
                    request.model_dump_json(),
                    len(rows),
                    int(time.time()),
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(
                f"benchmark_id: {request.benchmark_id!r} is taken", param="benchmark_id"
            ) from None
        return await self.get_benchmark(request.benchmark_id)

    async def list_benchmarks(self) -> ListBenchmarksResponse:
        rows = self.db.all("SELECT * FROM benchmarks ORDER BY seq")
        return ListBenchmarksResponse(data=[_to_benchmark(r) for r in rows])

    async def get_benchmark(self, benchmark_id: str) -> Benchmark:
        row = self._benchmark_row(benchmark_id)
        if row is None:
            raise NotFoundError(f"no benchmark {benchmark_id!r}", param="benchmark_id")
        return _to_benchmark(row)

    async def delete_benchmark(self, benchmark_id: str) -> DeleteBenchmarkResponse:
        await self.get_benchmark(benchmark_id)
        self.db.execute("DELETE FROM benchmarks WHERE benchmark_id = ?", (benchmark_id,))
        return DeleteBenchmarkResponse(benchmark_id=benchmark_id)

    def _benchmark_row(self, benchmark_id: str) -> sqlite3.Row | None:
        return self.db.one("SELECT * FROM benchmarks WHERE benchmark_id = ?", (benchmark_id,))

    async def _rows(self, dataset_id: str, field: str) -> list[dict[str, Any]]:
        try:
            await self.datasets.get_dataset(dataset_id)
        except NotFoundError:
            raise NotFoundError(f"{field}: no dataset {dataset_id!r}", param=field) from None
        rows: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            page = await self.datasets.iterrows(
                dataset_id, IterRowsRequest(start_index=start, limit=1000)
            )
            rows += page.data
            start = page.next_start_index if page.has_more else None
        if not rows:
            raise InvalidRequestError(f"{field}: dataset {dataset_id!r} has no rows", param=field)
        return rows

    # -- jobs ----------------------------------------------------------------------------------

    async def create_evaluation(self, request: CreateEvaluationRequest) -> EvaluationJob:
        row = self._benchmark_row(request.benchmark_id)
        if row is None:
            raise NotFoundError(
                f"benchmark_id: no benchmark {request.benchmark_id!r}", param="benchmark_id"
            )
        spec = RegisterBenchmarkRequest.model_validate_json(row["spec"])
        if (request.model is None) == (request.checkpoint is None):
            raise InvalidRequestError(
                "model: name a served model, or a job's checkpoint as `checkpoint` "
                "(`<job_uuid>/<checkpoint_id>`), not both",
                param="model",
            )
        if request.checkpoint is not None:
            model = await serve_checkpoint(self.post_training(), self.models, request.checkpoint)
            request = request.model_copy(update={"model": model})
        try:
            await self.models.get_model(request.model)
        except NotFoundError:
            raise NotFoundError(
                f"model: no model {request.model!r} is served here (GET /v1/models)",
                param="model",
            ) from None
        rows = (await self._rows(spec.dataset_id, "benchmark_id"))[: request.max_rows]
        Prompts(spec.input_messages).check(rows)
        evaluation_id = f"evaljob-{secrets.token_hex(12)}"
        folder = EvaluationFolder(self.root / evaluation_id)
        await asyncio.to_thread(folder.write_rows, rows)
        principal = PRINCIPAL.get()
        self.db.execute(
            "INSERT INTO evaluations (evaluation_id, benchmark_id, benchmark, request, owner, "
            "admin, key_id, status, total, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                evaluation_id,
                request.benchmark_id,
                spec.model_dump_json(),
                request.model_dump_json(),
                principal.owner if principal else None,
                int(principal.admin) if principal else 0,
                principal.key_id if principal else None,
                "queued",
                len(rows),
                int(time.time()),
            ),
        )
        folder.log(
            "info", f"created: {request.model} over {request.benchmark_id}, {len(rows)} rows"
        )
        self._run(evaluation_id)
        return await self.get_evaluation(evaluation_id)

    async def list_evaluations(self, request: ListEvaluationsRequest) -> ListEvaluationsResponse:
        sql = "SELECT evaluation_id FROM evaluations"
        params: tuple[str, ...] = ()
        if request.benchmark_id is not None:
            sql, params = f"{sql} WHERE benchmark_id = ?", (request.benchmark_id,)
        ids = [r["evaluation_id"] for r in self.db.all(f"{sql} ORDER BY seq DESC", params)]
        jobs = [await self.get_evaluation(i) for i in ids]
        if request.job_uuid is not None:
            jobs = [j for j in jobs if j.request.metadata.get("job_uuid") == request.job_uuid]
        return ListEvaluationsResponse(data=jobs)

    async def get_evaluation(self, evaluation_id: str) -> EvaluationJob:
        row = self._row(evaluation_id)
        if row["summary"] is not None:
            counts, metrics = _read_summary(row["summary"])
        else:
            counts, metrics = await asyncio.to_thread(self._summary, row)
        return EvaluationJob(
            evaluation_id=row["evaluation_id"],
            benchmark_id=row["benchmark_id"],
            model=json.loads(row["request"])["model"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            error=row["error"],
            row_counts=counts,
            metrics=metrics,
            request=CreateEvaluationRequest.model_validate_json(row["request"]),
        )

    async def cancel_evaluation(self, evaluation_id: str) -> EvaluationJob:
        status = self._row(evaluation_id)["status"]
        if status in FINAL:
            raise ConflictError(
                f"evaluation {evaluation_id} is {status}; only a queued or running job is "
                "cancelled",
                param="evaluation_id",
            )
        self._set(evaluation_id, "cancelling")
        work = self._work.get(evaluation_id)
        if work is not None:
            work.cancel()
        runner = self._runners.get(evaluation_id)
        if runner is not None:  # wait for what ran to be summed up
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(runner)
        return await self.get_evaluation(evaluation_id)

    async def get_evaluation_results(
        self, evaluation_id: str, request: EvaluationResultsRequest
    ) -> EvaluationResultsResponse:
        folder = self._folder(evaluation_id)
        results = await asyncio.to_thread(folder.read_results)
        end = request.start_index + request.limit
        page = results[request.start_index : end]
        more = end < len(results)
        return EvaluationResultsResponse(
            data=[EvaluationRow.model_validate(r) for r in page],
            has_more=more,
            next_start_index=end if more else None,
        )

    async def get_evaluation_events(self, evaluation_id: str) -> EvaluationEventsResponse:
        events = await asyncio.to_thread(self._folder(evaluation_id).read_events)
        return EvaluationEventsResponse(data=[EvaluationEvent.model_validate(e) for e in events])

    # -- the runner ----------------------------------------------------------------------------

    def _run(self, evaluation_id: str) -> None:
        task = asyncio.create_task(self._drive(evaluation_id), name=f"evaluation {evaluation_id}")
        self._runners[evaluation_id] = task
        task.add_done_callback(lambda _: self._runners.pop(evaluation_id, None))

    async def _drive(self, evaluation_id: str) -> None:
        row = self._row(evaluation_id)
        owner = row["owner"]  # run as its creator, as the request that made it did
        PRINCIPAL.set(Principal(owner, bool(row["admin"]), row["key_id"] or "") if owner else None)
        folder = self._folder(evaluation_id)
        try:
            if row["status"] != "cancelling":
                await self._rows_of(evaluation_id, row, folder)
            cancelled = self._row(evaluation_id)["status"] == "cancelling"
            self._finish(evaluation_id, "cancelled" if cancelled else "completed", folder)
        except asyncio.CancelledError:
            raise  # the server is stopping: the job resumes at its next start
        except Exception as exc:
            log.exception("evaluation %s failed", evaluation_id)
            self._finish(evaluation_id, "failed", folder, f"{type(exc).__name__}: {exc}")

    async def _rows_of(
        self, evaluation_id: str, row: sqlite3.Row, folder: EvaluationFolder
    ) -> None:
        spec = RegisterBenchmarkRequest.model_validate_json(row["benchmark"])
        request = CreateEvaluationRequest.model_validate_json(row["request"])
        runners = [
            await self.graders.runner(g, f"graders[{i}]") for i, g in enumerate(spec.graders)
        ]
        prompts = Prompts(spec.input_messages)
        await asyncio.to_thread(folder.repair)
        rows = await asyncio.to_thread(folder.read_rows)
        done = {r["index"] for r in await asyncio.to_thread(folder.read_results)}
        if row["started_at"] is None:
            self.db.execute(
                "UPDATE evaluations SET started_at = ?, status = CASE status WHEN 'queued' "
                "THEN 'running' ELSE status END WHERE evaluation_id = ?",
                (int(time.time()), evaluation_id),
            )
            folder.log("info", "started")
        else:
            folder.log("info", f"resumed: {len(done)} of {len(rows)} rows already graded")
        todo = iter([(i, r) for i, r in enumerate(rows) if i not in done])
        answers: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def decode() -> None:
            for index, item in todo:  # one iterator shared: each worker takes the next row
                await answers.put(await self._answer(index, item, prompts, request))

        async def decode_all() -> None:
            async with asyncio.TaskGroup() as group:
                for _ in range(request.concurrency):
                    group.create_task(decode())

        if self._row(evaluation_id)["status"] == "cancelling":  # cancelled while it started
            return
        grading = asyncio.create_task(self._grade(answers, runners, spec, folder))
        work = self._work[evaluation_id] = asyncio.create_task(decode_all())
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                grading.cancel()
                raise
            folder.log("warning", "cancelled: rows not answered are not graded")
        finally:
            self._work.pop(evaluation_id, None)
        await answers.put(None)
        await grading

    async def _answer(
        self,
        index: int,
        item: dict[str, Any],
        prompts: Prompts,
        request: CreateEvaluationRequest,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"index": index, "item": item, "input": [], "output": None}
        record.update(scores={}, passed={}, errors={}, finish_reason=None, usage=None)
        try:
            record["input"] = prompts.messages(item, request.system_message)
        except GradingError as e:
            record["errors"]["inference"] = f"row {index}: {e}"
            return record
        sampling = request.sampling.model_dump(exclude_none=True)
        try:
            chat = ChatCompletionRequest.model_validate(
                {"model": request.model, "messages": record["input"], **sampling}
            )
            answer = await self.inference.chat_completion(chat)
        except LlamaPostError as e:
            record["errors"]["inference"] = f"row {index}: {e.message}"
            return record
        except ValidationError as e:  # a message of the row the chat route would refuse
            problem = e.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            record["errors"]["inference"] = f"row {index}: {where}: {problem['msg']}"
            return record
        assert isinstance(answer, ChatCompletion)  # not a stream: `stream` is unset
        choice = answer.choices[0]
        record["output"] = choice.message.content
        record["finish_reason"] = choice.finish_reason
        record["usage"] = answer.usage.model_dump()
        return record

    async def _grade(
        self,
        answers: asyncio.Queue[dict[str, Any] | None],
        runners: list[GraderRunner],
        spec: RegisterBenchmarkRequest,
        folder: EvaluationFolder,
    ) -> None:
        """Grade the answers as they arrive, those waiting together, until the end (None)."""
        ended = False
        while not ended:
            batch = [await answers.get()]
            while not answers.empty() and len(batch) < GRADE_AT_ONCE:
                batch.append(answers.get_nowait())
            ended = batch[-1] is None
            records = [r for r in batch if r is not None]
            if records:
                await asyncio.to_thread(_grade_all, records, runners, spec)
                for record in records:
                    await asyncio.to_thread(folder.append_result, record)

    def _finish(
        self, evaluation_id: str, status: str, folder: EvaluationFolder, error: str | None = None
    ) -> None:
        row = self._row(evaluation_id)
        counts, metrics = self._summary(row)
        summary = json.dumps(
            {
                "counts": counts.model_dump(),
                "metrics": {k: v.model_dump() for k, v in metrics.items()},
            }
        )
        self.db.execute(
            "UPDATE evaluations SET status = ?, completed_at = ?, error = ?, summary = ? "
            "WHERE evaluation_id = ?",
            (status, int(time.time()), error, summary, evaluation_id),
        )
        means = ", ".join(f"{k} {v.mean:.4f}" for k, v in metrics.items())
        folder.log(
            "error" if error else "info",
            f"{status}: {counts.done} rows; {means}" + (f"; {error}" if error else ""),
        )

    # -- the record ----------------------------------------------------------------------------

    def _row(self, evaluation_id: str) -> sqlite3.Row:
        check_id(evaluation_id, EVALUATION_ID, "evaluation")
        row = self.db.one("SELECT * FROM evaluations WHERE evaluation_id = ?", (evaluation_id,))
        if row is None:
            raise NotFoundError(f"no evaluation {evaluation_id!r}", param="evaluation_id")
        return row

    def _folder(self, evaluation_id: str) -> EvaluationFolder:
        self._row(evaluation_id)
        return EvaluationFolder(self.root / evaluation_id)

    def _set(self, evaluation_id: str, status: str) -> None:
        self.db.execute(
            "UPDATE evaluations SET status = ? WHERE evaluation_id = ?", (status, evaluation_id)
        )

    def _summary(self, row: sqlite3.Row) -> tuple[RowCounts, dict[str, MetricSummary]]:
        spec = RegisterBenchmarkRequest.model_validate_json(row["benchmark"])
        results = EvaluationFolder(self.root / row["evaluation_id"]).read_results()
        names = [g.name for g in spec.graders]
        counts = RowCounts(
            total=row["total"],
            done=len(results),
            errored=sum(1 for r in results if "inference" in r["errors"]),
            passed=sum(1 for r in results if all(r["passed"].get(n) for n in names)),
        )
        return counts, summarize(results, names)


def _grade_all(
    records: list[dict[str, Any]], runners: list[GraderRunner], spec: RegisterBenchmarkRequest
) -> None:
    """Score each answered record with every grader, in one call per grader."""
    answered = [r for r in records if r["output"] is not None]
    pairs = [(r["item"], Sample.of(r["output"])) for r in answered]
    for runner in runners:
        name = runner.grader.name
        threshold = spec.threshold(name)
        for record in records:
            record["scores"][name], record["passed"][name] = 0.0, False
        for record, result in zip(answered, runner.grade_many(pairs), strict=True):
            record["scores"][name] = result.score
            record["passed"][name] = result.error is None and result.score >= threshold
            if result.error is not None:
                record["errors"][name] = result.error


def _read_summary(text: str) -> tuple[RowCounts, dict[str, MetricSummary]]:
    data = json.loads(text)
    metrics = {k: MetricSummary.model_validate(v) for k, v in data["metrics"].items()}
    return RowCounts.model_validate(data["counts"]), metrics


def _to_benchmark(row: sqlite3.Row) -> Benchmark:
    spec = RegisterBenchmarkRequest.model_validate_json(row["spec"])
    return Benchmark(**spec.model_dump(), row_count=row["row_count"], created_at=row["created_at"])
