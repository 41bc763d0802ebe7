"""An evaluation job's folder, how a row becomes a chat, the metrics of graded rows, and how a
job's checkpoint becomes a model to evaluate.

The folder holds `rows.jsonl` (the benchmark's rows, snapshotted at creation), `results.jsonl`
(one record a graded row, each written by one append, so a kill leaves it whole or absent) and
`events.jsonl` (the job's log). The results are the record of what ran: a resumed job grades
only the rows without one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llama_post.apis.evaluations import InputMessage, MetricSummary
from llama_post.apis.models import AdapterSource, HuggingFaceSource, RegisterModelRequest
from llama_post.errors import ErrorDetail, InvalidRequestError, NotFoundError
from llama_post.graders.templates import GradingError, compile_template, render

Z95 = 1.959963984540054


class EvaluationFolder:
    """The one place an evaluation folder's file names are spelled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = path / "rows.jsonl"
        self.results = path / "results.jsonl"
        self.events = path / "events.jsonl"

    def write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        part = self.rows.with_suffix(".part")
        part.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        part.replace(self.rows)

    def read_rows(self) -> list[dict[str, Any]]:
        return list(_records(self.rows))

    def read_results(self) -> list[dict[str, Any]]:
        """Each row's result, once (the first written), in row order."""
        seen: dict[int, dict[str, Any]] = {}
        for record in _records(self.results):
            seen.setdefault(int(record["index"]), record)
        return [seen[i] for i in sorted(seen)]

    def repair(self) -> None:
        """Cut off a result a kill left half-written, so the next one starts a line."""
        if not self.results.exists():
            return
        data = self.results.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.results.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append_result(self, record: dict[str, Any]) -> None:
        _append(self.results, record)

    def log(self, level: str, message: str) -> None:
        _append(self.events, {"created_at": time.time(), "level": level, "message": message})

    def read_events(self) -> list[dict[str, Any]]:
        return list(_records(self.events))


def _append(path: Path, record: dict[str, Any]) -> None:
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            try:
                yield json.loads(raw)
            except ValueError:  # the last line of a write a kill cut off
                continue


# -- a row as a chat -------------------------------------------------------------------------


class Prompts:
    """How a benchmark's rows become messages: its `input_messages` templates, else the row's
    own shape. Built once per benchmark; a template that does not parse is a 400 naming it."""

    def __init__(self, templates: list[InputMessage] | None, field: str = "input_messages"):
        self.templates = (
            None
            if templates is None
            else [
                (m.role, compile_template(m.content, f"{field}[{i}].content"))
                for i, m in enumerate(templates)
            ]
        )
        self.field = field

    def messages(self, row: dict[str, Any], system: str | None = None) -> list[dict[str, str]]:
        """The chat of `row`; a `GradingError` naming the field when it has none."""
        head = [{"role": "system", "content": system}] if system else []
        if self.templates is not None:
            scope = {"item": row, "sample": {"output_text": "", "output_json": None}}
            return head + [
                {"role": role, "content": render(t, f"{self.field}[{i}].content", scope)}
                for i, (role, t) in enumerate(self.templates)
            ]
        return head + _own_shape(row)

    def check(self, rows: Sequence[dict[str, Any]], offset: int = 0) -> None:
        """A 400 listing every row that cannot become a chat (at most 20), by its index."""
        details = []
        for i, row in enumerate(rows):
            try:
                self.messages(row)
            except GradingError as e:
                details.append(ErrorDetail(row=offset + i, message=str(e)))
        if details:
            raise InvalidRequestError(
                f"{len(details)} row(s) cannot become a chat; row {details[0].row}: "
                f"{details[0].message}",
                param=self.field,
                details=details[:20],
            )


def _own_shape(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = row.get("messages", row.get("chat_completion_input"))
    if isinstance(messages, str):  # Llama Stack keeps `chat_completion_input` as JSON text
        try:
            messages = json.loads(messages)
        except ValueError as e:
            raise GradingError(f"chat_completion_input: not JSON: {e}") from e
    if isinstance(messages, list) and messages:
        chat = [_message(m, i) for i, m in enumerate(messages)]
        if chat[-1]["role"] == "assistant" and len(chat) > 1:  # the reference answer
            chat = chat[:-1]
        return chat
    for key in ("input_query", "prompt", "input"):
        if isinstance(row.get(key), str):
            return [{"role": "user", "content": row[key]}]
    raise GradingError(
        "the row has no `messages`, `chat_completion_input`, `input_query` or `prompt`; "
        "give the benchmark `input_messages` templates to build one"
    )


def _message(message: Any, i: int) -> dict[str, str]:
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("role"), str)
        or not isinstance(message.get("content"), str)
    ):
        raise GradingError(f"messages[{i}]: a message is {{role, content}} with string values")
    return {"role": message["role"], "content": message["content"]}


# -- metrics ---------------------------------------------------------------------------------


def summarize(results: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, MetricSummary]:
    return {name: _summary([r for r in results], name) for name in names}


def _summary(results: Sequence[dict[str, Any]], name: str) -> MetricSummary:
    scores = [float(r["scores"].get(name, 0.0)) for r in results]
    passed = sum(1 for r in results if r["passed"].get(name))
    errors = sum(1 for r in results if name in r["errors"] or "inference" in r["errors"])
    n = len(scores)
    mean = sum(scores) / n if n else 0.0
    var = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
    stderr = math.sqrt(var / n) if n else 0.0
    low, high = _wilson(passed, n)
    return MetricSummary(
        count=n,
        errors=errors,
        mean=mean,
        stderr=stderr,
        ci95_low=mean - Z95 * stderr,
        ci95_high=mean + Z95 * stderr,
        pass_rate=passed / n if n else 0.0,
        pass_rate_ci95_low=low,
        pass_rate_ci95_high=high,
        passed=passed,
        failed=n - passed,
    )


def _wilson(passed: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound at 0 and at 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 0.0
    p = passed / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# -- a checkpoint as a model ------------------------------------------------------------------


async def serve_checkpoint(post_training: Any, models: Any, checkpoint: str) -> str:
    """The model id a job's checkpoint is served as: its own (`ft/<job>` for the final one), or
    `ckpt/<job>/<checkpoint>`, registered now (an adapter over the job's base, or a full
    model) through the caller's guarded APIs, so it is the caller's."""
    if post_training is None:
        raise InvalidRequestError("checkpoint: no post-training is served here", param="checkpoint")
    job_uuid, checkpoint_id = checkpoint.split("/", 1)
    try:
        found = await post_training.get_checkpoint(job_uuid, checkpoint_id)
        status = await post_training.get_job_status(job_uuid)
    except NotFoundError:
        raise NotFoundError(
            f"checkpoint: no checkpoint {checkpoint!r}", param="checkpoint"
        ) from None
    if found.model_id is not None:
        return str(found.model_id)
    model_id = f"ckpt/{job_uuid}/{checkpoint_id}"
    try:
        await models.get_model(model_id)
        return model_id
    except NotFoundError:
        pass
    source: AdapterSource | HuggingFaceSource = (
        AdapterSource(type="adapter", path=found.path, base_model=status.model)
        if status.algorithm == "LoRA"
        else HuggingFaceSource(type="huggingface", path=found.path)
    )
    metadata: dict[str, Any] = {"job_uuid": job_uuid, "checkpoint": checkpoint_id}
    request = RegisterModelRequest(model_id=model_id, source=source, metadata=metadata)
    await models.register_model(request)
    return model_id
