"""The graders that compare text: `string_check`, `regex` and `json_schema`."""

from __future__ import annotations

import json
from typing import Any

from llama_post.apis.post_training.graders import JsonSchemaGrader, RegexGrader, StringCheckGrader
from llama_post.errors import InvalidRequestError
from llama_post.graders.templates import compile_template, render

# A pattern is the user's and the text the model's: the `regex` module's timeout bounds a
# pattern that backtracks without end (the standard `re` has none).
REGEX_TIMEOUT_S = 1.0


class StringCheck:
    def __init__(self, grader: StringCheckGrader, where: str) -> None:
        self.input = compile_template(grader.input, f"{where}.input")
        self.reference = compile_template(grader.reference, f"{where}.reference")
        self.operation = grader.operation
        self.where = where

    def score(self, scope: dict[str, Any]) -> float:
        text = render(self.input, f"{self.where}.input", scope)
        reference = render(self.reference, f"{self.where}.reference", scope)
        if self.operation == "eq":
            return float(text == reference)
        if self.operation == "ne":
            return float(text != reference)
        if self.operation == "like":
            return float(reference in text)
        return float(reference.casefold() in text.casefold())


class RegexMatch:
    def __init__(self, grader: RegexGrader, where: str) -> None:
        import regex  # imported when needed: a server starts without it

        self.input = compile_template(grader.input, f"{where}.input")
        try:
            self.pattern = regex.compile(grader.pattern)
        except regex.error as e:
            raise InvalidRequestError(
                f"{where}.pattern: not a valid regular expression: {e}", param=f"{where}.pattern"
            ) from e
        self.where = where

    def score(self, scope: dict[str, Any]) -> float:
        text = render(self.input, f"{self.where}.input", scope)
        return float(self.pattern.search(text, timeout=REGEX_TIMEOUT_S) is not None)


class JsonSchemaMatch:
    def __init__(self, grader: JsonSchemaGrader, where: str) -> None:
        import jsonschema

        self.input = compile_template(grader.input, f"{where}.input")
        try:
            jsonschema.Draft202012Validator.check_schema(grader.json_schema)
        except jsonschema.SchemaError as e:
            path = "".join(f"[{p!r}]" for p in e.path)
            raise InvalidRequestError(
                f"{where}.schema{path}: not a valid JSON Schema: {e.message}",
                param=f"{where}.schema",
            ) from e
        self.validator = jsonschema.Draft202012Validator(grader.json_schema)
        self.where = where

    def score(self, scope: dict[str, Any]) -> float:
        text = render(self.input, f"{self.where}.input", scope)
        try:
            value = json.loads(text)
        except ValueError:
            return 0.0  # not JSON: a wrong answer, not a grader's failure
        return float(self.validator.is_valid(value))
