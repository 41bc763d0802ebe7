"""Constrained decoding: a request's constraint, compiled by llguidance, masks its row's logits.

llguidance was picked over xgrammar on this CPU (docs/benchmarks.md, "Grammar engine"): it has no
dependencies, and compiles a JSON schema ~9x faster (0.8 ms against 7 ms), which is paid on every
new schema at admission; xgrammar computes a mask faster (2 us against 28 us median), but both are
a small part of one decode step. Grammars are llguidance's: JSON schema, regex (Rust's `regex`
syntax), a list of choices, and a context-free grammar in its Lark dialect or llama.cpp's GBNF
(a grammar without a `start:` rule; converted to Lark).

A constraint is compiled once per base model (so per tokenizer) and cached; each sequence gets a
copy of the compiled matcher, masks its own row before sampling and is fed the token it chose.
"""

from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from llama_post.apis.inference import SamplingFields
from llama_post.errors import GenerationError, InvalidRequestError

Format = Literal["json_schema", "regex", "choice", "grammar"]
ANY_OBJECT = '{"type": "object"}'
CACHED = 64  # compiled grammars kept per base model
# JSON without free whitespace between tokens, as `json.dumps(..., separators=(",", ":"))` writes
# it: a model may otherwise fill its budget with blanks (vLLM's `disable_any_whitespace`)
COMPACT: Any = {"whitespace_flexible": False}
_BITS = torch.arange(32, dtype=torch.int32)


@dataclass(frozen=True)
class Constraint:
    field: str  # the request field it came from, as errors name it
    format: Format  # llguidance's `grammar_from` format
    text: str


def constraint_of(request: SamplingFields) -> Constraint | None:
    """The one constraint a request asks for (OpenAI's `response_format` or vLLM's
    `structured_outputs`), or None. Two at once, or an empty `structured_outputs`, is a 400."""
    found: list[Constraint] = []
    rf = request.response_format
    if rf is not None and rf.type == "json_object":
        found.append(Constraint("response_format", "json_schema", ANY_OBJECT))
    elif rf is not None and rf.type == "json_schema":
        schema = rf.json_schema.schema_ if rf.json_schema else None
        if schema is None:
            raise InvalidRequestError(
                "response_format.json_schema.schema: give the JSON schema the output must match "
                '(or use {"type": "json_object"} for any JSON object)',
                param="response_format.json_schema.schema",
            )
        found.append(Constraint("response_format.json_schema.schema", "json_schema", _dump(schema)))
    so = request.structured_outputs
    if so is not None:
        fields: list[tuple[str, Format, str | None]] = [
            ("json", "json_schema", None if so.json_ is None else _dump(so.json_)),
            ("regex", "regex", so.regex),
            ("choice", "choice", None if so.choice is None else json.dumps(so.choice)),
            ("grammar", "grammar", so.grammar),
        ]
        given = [
            Constraint(f"structured_outputs.{name}", fmt, text)
            for name, fmt, text in fields
            if text is not None
        ]
        if not given:
            raise InvalidRequestError(
                "structured_outputs: give one of choice, regex, json, grammar",
                param="structured_outputs",
            )
        found += given
    if len(found) > 1:
        names = ", ".join(c.field for c in found)
        raise InvalidRequestError(
            f"{found[1].field}: give one constraint per request; this one sets {names}",
            param=found[1].field,
        )
    return found[0] if found else None


def _dump(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True)  # one cache entry however the keys were ordered


class Guide:
    """One sequence's matcher: masks the logits it may not choose, follows what it chose."""

    def __init__(self, matcher: Any, vocab: int) -> None:
        self.matcher = matcher
        self.words = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the forbidden entries of this row's logits (1-D, in place) to -inf."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.words, 0)
        self._check()
        words = torch.from_numpy(self.words[0])
        allowed = ((words.unsqueeze(-1) >> _BITS) & 1).view(-1).bool()
        allowed = allowed[: logits.shape[-1]].to(logits.device)
        logits[: allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
        logits[allowed.shape[0] :] = float("-inf")  # ids past the tokenizer's

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)
        self._check()

    @property
    def done(self) -> bool:
        """The output is complete: the grammar allows nothing more (but the end)."""
        return bool(self.matcher.is_stopped())

    def _check(self) -> None:
        if self.matcher.is_error():
            raise GuideError(f"constrained decoding failed: {self.matcher.get_error()}")


class GuideError(GenerationError):
    """A matcher that cannot go on (a grammar's resource limits): its sequence fails alone."""


class Grammars:
    """Compiled constraints for one tokenizer, and the llguidance view of that tokenizer."""

    def __init__(self, tokenizer: Any, vocab: int, eos_ids: frozenset[int]) -> None:
        self.hf_tokenizer = tokenizer
        self.vocab = vocab
        self.eos_ids = sorted(eos_ids)
        self._tokenizer: Any = None
        self._compiled: collections.OrderedDict[Constraint, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def compile(self, constraint: Constraint) -> Any:
        """The compiled matcher for `constraint` (blocking: call it in a thread). An invalid
        schema, regex or grammar is a 400 naming the request's field."""
        with self._lock:
            if constraint in self._compiled:
                self._compiled.move_to_end(constraint)
                return self._compiled[constraint]
        from llguidance import LLMatcher, grammar_from

        try:
            if constraint.format == "json_schema":
                grammar = LLMatcher.grammar_from_json_schema(constraint.text, defaults=COMPACT)
            else:
                grammar = grammar_from(constraint.format, constraint.text)
        except ValueError as exc:
            raise _invalid(constraint, str(exc)) from None
        matcher = LLMatcher(self.tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise _invalid(constraint, matcher.get_error())
        with self._lock:
            self._compiled[constraint] = matcher
            while len(self._compiled) > CACHED:
                self._compiled.popitem(last=False)
        return matcher

    def guide(self, compiled: Any) -> Guide:
        return Guide(compiled.deep_copy(), self.vocab)

    def tokenizer(self) -> Any:
        """llguidance's tokenizer, built on first use (about half a second)."""
        with self._lock:
            if self._tokenizer is None:
                from llguidance.hf import from_tokenizer

                eos = self.eos_ids or None
                self._tokenizer = from_tokenizer(self.hf_tokenizer, self.vocab, eos)
            return self._tokenizer


def _invalid(constraint: Constraint, why: str) -> InvalidRequestError:
    what = "JSON schema" if constraint.format == "json_schema" else constraint.format
    return InvalidRequestError(
        f"{constraint.field}: not a valid {what}: {why.strip()}",
        param=constraint.field,
    )
