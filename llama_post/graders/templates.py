"""Templates in graders: `{{item.answer}}`, `{{sample.output_text}}`, `{{sample.output_json.x}}`.

Rendered by Jinja's sandbox (no attribute of Python's internals is reachable) with strict
undefined values, so a field the row lacks is an error for that sample, not an empty string.
A template that does not parse is refused when the grader is built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

from llama_post.errors import InvalidRequestError

ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True)
class Sample:
    """What the policy answered: its text, and that text parsed when it is JSON."""

    output_text: str
    output_json: Any | None = None

    @classmethod
    def of(cls, text: str) -> Sample:
        """The sample of a model's answer: its text, and `output_json` when it parses."""
        try:
            return cls(text, json.loads(text))
        except ValueError:
            return cls(text)


ErrorKind = Literal[
    "invalid_variable",  # a template names what the row or sample lacks
    "formula",  # multi's formula failed on these scores (a division by zero)
    "model_parse",  # score_model's answer held no number in range
    "model_server",  # score_model's model could not answer
    "python_runtime",  # the python grader raised, or returned no number
    "python_server",  # its process was killed (CPU) or crashed
    "unresponsive",  # it took longer than its wall limit
    "other",
]


class GradingError(Exception):
    """Grading one sample failed: the sample scores 0 and carries this message."""

    def __init__(self, message: str, kind: ErrorKind = "other") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


# What a template may hold: text and `{{ ... }}` substitutions of the row's and the sample's
# fields, optionally through one of these filters. No statements, calls or loops, so rendering
# one costs what its text and fields cost, in the server as in a training worker.
FILTERS = frozenset({"lower", "upper", "trim", "string", "tojson", "length"})
NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Filter,
)


def compile_template(text: str, field: str) -> Template:
    try:
        tree = ENV.parse(text)
    except TemplateSyntaxError as e:
        raise InvalidRequestError(
            f"{field}: the template does not parse: {e.message} (line {e.lineno})", param=field
        ) from e
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Name) and node.name not in ("item", "sample"):
            raise InvalidRequestError(
                f"{field}: {{{{ {node.name} }}}} names nothing; a template reads "
                f"`item.<field>` (the row) and `sample.output_text` or `sample.output_json`",
                param=field,
            )
        if not isinstance(node, NODES) or (
            isinstance(node, nodes.Filter) and (node.name not in FILTERS or node.args)
        ):
            allowed = ", ".join(sorted(FILTERS))
            raise InvalidRequestError(
                f"{field}: a template holds text and {{{{ ... }}}} substitutions of `item` and "
                f"`sample` fields (with the filters {allowed}); line {node.lineno} has more",
                param=field,
            )
    return ENV.from_string(tree)


def context(item: Mapping[str, Any], sample: Sample) -> dict[str, Any]:
    return {
        "item": dict(item),
        "sample": {"output_text": sample.output_text, "output_json": sample.output_json},
    }


def render(template: Template, field: str, scope: dict[str, Any]) -> str:
    try:
        return template.render(scope)
    except TemplateError as e:
        raise GradingError(f"{field}: {e}", "invalid_variable") from e
