"""How a job reads the rows of Llama Stack's purposes, whose rows registration keeps as given.

Llama Stack's trainers read a row by the job's `data_format`: `instruct` reads
`chat_completion_input` (one user message, often a JSON string, as in its simpleqa datasets)
and `expected_answer`; `dialog` reads `dialog` (a JSON string or a list). llama-post reads
those, and its own shapes (`prompt`/`completion`, `messages`), into its own shapes when the
job is created, so a row that does not fit fails the creation with its row number and field,
and the recipes read one shape. A preference row is a prompt (`prompt` or `messages`) with
`chosen` and `rejected`; where those two are whole conversations (TRL's style), the turns
they share are the prompt and the rest are the answers.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError

from llama_post.apis.datasets.rows import DialogRow, InstructRow, PreferenceRow
from llama_post.errors import ErrorDetail, InvalidRequestError

Row = dict[str, Any]
DataFormat = Literal["instruct", "dialog"]


class RowError(ValueError):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def sft_rows(
    rows: list[Row], data_format: DataFormat | None, param: str
) -> tuple[list[Row], DataFormat | None]:
    """The rows as SFT reads them in `data_format` (unset: the first row's shape decides),
    and that format."""
    if data_format is None:
        first = rows[0] if rows else {}
        data_format = "dialog" if "messages" in first or "dialog" in first else "instruct"
    read = _instruct if data_format == "instruct" else _dialog
    return _each(rows, read, param, data_format), data_format


def preference_rows(rows: list[Row], param: str) -> list[Row]:
    return _each(rows, _pair, param, "preference")


def _each(rows: list[Row], read: Any, param: str, what: str) -> list[Row]:
    shaped, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            shaped.append(read(row))
        except RowError as exc:
            problems.append(ErrorDetail(row=number, field=exc.field, message=str(exc)))
        except ValidationError as exc:
            problems += [
                ErrorDetail(
                    row=number,
                    field=".".join(str(p) for p in e["loc"]) or None,
                    message=e["msg"],
                )
                for e in exc.errors()
            ]
    if problems:
        first = problems[0]
        where = f"row {first.row}" + (f" field {first.field}" if first.field else "")
        raise InvalidRequestError(
            f"{param}: {len({p.row for p in problems})} of {len(rows)} rows cannot be read as "
            f"{what} rows: {where}: {first.message}",
            param=param,
            details=problems[:20],
        )
    return shaped


def _instruct(row: Row) -> Row:
    if "prompt" in row or "completion" in row:
        valid = InstructRow.model_validate(row)
        return {"prompt": valid.prompt, "completion": valid.completion}
    if "chat_completion_input" not in row:
        raise RowError(
            None,
            "instruct reads `prompt` and `completion`, or Llama Stack's `chat_completion_input` "
            "and `expected_answer`; the row has neither",
        )
    messages = _json_list(row["chat_completion_input"], "chat_completion_input")
    if len(messages) != 1 or not isinstance(messages[0], dict):
        raise RowError(
            "chat_completion_input",
            f"instruct reads one user message here (as Llama Stack does); got {len(messages)} "
            "(use data_format dialog for conversations)",
        )
    content = messages[0].get("content")
    if not isinstance(content, str):
        raise RowError("chat_completion_input.0.content", "the message has no text content")
    answer = row.get("expected_answer")
    if not isinstance(answer, str):
        raise RowError("expected_answer", "a string is required")
    return {"prompt": content, "completion": answer}


def _dialog(row: Row) -> Row:
    if "messages" in row:
        messages = row["messages"]
        field = "messages"
    elif "dialog" in row:
        messages = _json_list(row["dialog"], "dialog")
        field = "dialog"
    else:
        raise RowError(
            None, "dialog reads `messages`, or Llama Stack's `dialog`; the row has neither"
        )
    try:
        valid = DialogRow.model_validate({"messages": messages})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in (field, *problem["loc"][1:]))
        raise RowError(where, problem["msg"]) from None
    return {"messages": [m.model_dump(mode="json") for m in valid.messages]}


def _pair(row: Row) -> Row:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        limit = min(len(chosen), len(rejected)) - 1  # each keeps an answer
        shared = 0
        while shared < limit and chosen[shared] == rejected[shared]:
            shared += 1
        if shared:
            row = {
                "messages": chosen[:shared],
                "chosen": chosen[shared:],
                "rejected": rejected[shared:],
            }
    valid = PreferenceRow.model_validate(row)
    return valid.model_dump(mode="json", exclude_none=True, include=_PAIR_FIELDS)


_PAIR_FIELDS = {"prompt", "messages", "chosen", "rejected"}


def _json_list(value: Any, field: str) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(field, f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise RowError(field, "a list of messages (or its JSON text) is required")
    return value
