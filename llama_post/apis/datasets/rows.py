"""The row schema each dataset purpose fixes. Post-training reads rows through these too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_post.apis.datasets.purpose import FREE_FORM, DatasetPurpose


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class InstructRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str
    completion: str


def _has_assistant_turn(schema: dict[str, Any]) -> None:
    assistant = {"type": "object", "properties": {"role": {"const": "assistant"}}}
    schema["properties"]["messages"]["contains"] = assistant | {"required": ["role"]}


def _one_prompt(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [
        {
            "required": [given],
            "properties": {given: {"not": {"type": "null"}}, other: {"type": "null"}},
        }
        for given, other in (("prompt", "messages"), ("messages", "prompt"))
    ]


class DialogRow(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_has_assistant_turn)

    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_assistant_turn(self) -> DialogRow:
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("messages has no assistant turn to learn from")
        return self


class PreferenceRow(BaseModel):
    """A prompt (`prompt` or `messages`) and two answers. OpenAI's DPO rows (`input.messages`,
    `preferred_output`, `non_preferred_output`) are read as `messages`, `chosen`, `rejected`."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_one_prompt)

    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    chosen: str | list[Message]
    rejected: str | list[Message]

    @model_validator(mode="before")
    @classmethod
    def _openai_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "preferred_output" not in data:
            return data
        row = dict(data)
        given = row.pop("input", None)
        if isinstance(given, dict):
            rest = {k: v for k, v in given.items() if k != "messages"}
            row["messages"] = given.get("messages")
            if rest:
                row["input"] = rest  # tools and the like: kept, not used
        row["chosen"] = row.pop("preferred_output")
        row["rejected"] = row.pop("non_preferred_output", None)
        return row

    @model_validator(mode="after")
    def _one_prompt(self) -> PreferenceRow:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class PromptRow(BaseModel):
    """A prompt to sample answers to (`prompt`, a user turn, or `messages`), with whatever
    reference fields the job's graders read (`{{item.answer}}`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_one_prompt)

    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_prompt(self) -> PromptRow:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class FreeRow(BaseModel):
    """A row of one of Llama Stack's purposes: any JSON object, kept as given. A job reads it
    in the shape its `data_format` names and checks it then (`shapes.py`)."""

    model_config = ConfigDict(extra="allow")


ROW_MODELS: dict[DatasetPurpose, type[BaseModel]] = {
    DatasetPurpose.instruct: InstructRow,
    DatasetPurpose.dialog: DialogRow,
    DatasetPurpose.preference: PreferenceRow,
    DatasetPurpose.prompt: PromptRow,
}
ROW_MODELS |= {purpose: FreeRow for purpose in FREE_FORM}


def row_schema(purpose: DatasetPurpose) -> dict[str, Any]:
    """The JSON schema of one row of `purpose`, self-contained (its definitions inlined)."""
    schema = ROW_MODELS[purpose].model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


# Columns a tabular file (CSV, Parquet) must have; each inner tuple means "one of these".
REQUIRED_COLUMNS: dict[DatasetPurpose, list[tuple[str, ...]]] = {
    DatasetPurpose.instruct: [("prompt",), ("completion",)],
    DatasetPurpose.dialog: [("messages",)],
    DatasetPurpose.preference: [("prompt", "messages"), ("chosen",), ("rejected",)],
    DatasetPurpose.prompt: [("prompt", "messages")],
}
REQUIRED_COLUMNS |= {purpose: [] for purpose in FREE_FORM}

# Columns that hold lists of messages; a CSV cell carries them as JSON text.
STRUCTURED_COLUMNS = frozenset({"messages", "chosen", "rejected"})


def missing_columns(purpose: DatasetPurpose, columns: list[str]) -> list[str]:
    return [
        " or ".join(need)
        for need in REQUIRED_COLUMNS[purpose]
        if not any(c in columns for c in need)
    ]
