"""Constrained decoding on the tiny random model, whose free output is never JSON nor matches a
regex: every mode's output parses or matches, greedy and sampled, streamed or not, over HTTP and
through the library client; bad constraints are 400s naming their field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema_rs
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import TINY, Driver, HttpDriver, Result, Server

HI = [{"role": "user", "content": "Describe the weather today."}]
SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
        "tag": {"type": "string", "maxLength": 6},
    },
    "required": ["answer", "score", "tag"],
    "additionalProperties": False,
}
NAMED = {"name": "weather", "schema": SCHEMA}
REGEX = r"[a-z]{3,8}-[0-9]{2}"
CHOICES = ["red", "green", "blue"]
LARK = 'start: greeting " " name\ngreeting: "hello" | "hi"\nname: /[A-Z][a-z]{1,6}/'
LARK_TEXT = r"(hello|hi) [A-Z][a-z]{1,6}"  # what LARK's language is, as a regex
GBNF = 'root ::= answer "!"\nanswer ::= "yes" | "no"'
GBNF_TEXT = r"(yes|no)!"


def is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def check_json_object(text: str) -> None:
    assert is_json_object(text), text


def closed(prefix: str) -> str:
    """A JSON text cut short, closed: its open string and brackets, and a key, number or literal
    left unfinished (whichever ending parses)."""
    stack, in_string, escaped = [], False, False
    for ch in prefix:
        if in_string:
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            stack.pop()
    text = (prefix[: -1 if escaped else None] + ('"' if in_string else "")).rstrip(",")
    closers = "".join(reversed(stack))
    for ending in ("", ":null", "null", "0", "e", "ue", "rue", "l", "ll", "ull", "se", "lse"):
        try:
            json.loads(text + ending + closers)
        except ValueError:
            continue
        return text + ending + closers
    return text + closers


def check_schema(text: str) -> None:
    jsonschema_rs.validate(SCHEMA, json.loads(text))


def matcher(pattern: str) -> Callable[[str], None]:
    def check(text: str) -> None:
        assert re.fullmatch(pattern, text), text

    return check


def check_choice(text: str) -> None:
    assert text in CHOICES, text


MODES: dict[str, tuple[dict[str, Any], Callable[[str], None]]] = {
    "json_schema": (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": SCHEMA},
            }
        },
        check_schema,
    ),
    "json": ({"structured_outputs": {"json": SCHEMA}}, check_schema),
    "regex": ({"structured_outputs": {"regex": REGEX}}, matcher(REGEX)),
    "choice": ({"structured_outputs": {"choice": CHOICES}}, check_choice),
    "lark": ({"structured_outputs": {"grammar": LARK}}, matcher(LARK_TEXT)),
    "gbnf": ({"structured_outputs": {"grammar": GBNF}}, matcher(GBNF_TEXT)),
}
SAMPLED = {"temperature": 1.0, "seed": 5}


def chat(api: Driver, **body: Any) -> Result:
    return api.call("inference", "chat_completion", body={"model": TINY, "messages": HI, **body})


def complete(api: Driver, **body: Any) -> Result:
    return api.call("inference", "completion", body={"model": TINY, "prompt": "Weather:", **body})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sampling", ["greedy", "sampled"])
def test_chat_output_matches_its_constraint(api: Driver, mode: str, sampling: str) -> None:
    constraint, check = MODES[mode]
    knobs = SAMPLED if sampling == "sampled" else {"temperature": 0}
    answer = chat(api, max_tokens=200, **knobs, **constraint)
    assert answer.status == 200, answer.body
    (choice,) = answer.body["choices"]
    assert choice["finish_reason"] == "stop", choice
    check(choice["message"]["content"])


@pytest.mark.parametrize("sampling", ["greedy", "sampled"])
def test_json_object_is_an_object_or_its_cut_beginning(api: Driver, sampling: str) -> None:
    """Any JSON object is unbounded (its strings too): the random model fills its budget. What
    it wrote is an object cut at `max_tokens`: one whose open parts, closed, parse."""
    knobs = SAMPLED if sampling == "sampled" else {"temperature": 0}
    answer = chat(api, max_tokens=40, response_format={"type": "json_object"}, **knobs)
    assert answer.status == 200, answer.body
    (choice,) = answer.body["choices"]
    text = choice["message"]["content"]
    if choice["finish_reason"] == "stop":
        check_json_object(text)
    else:
        assert choice["finish_reason"] == "length" and text.startswith("{"), choice
        check_json_object(closed(text))


@pytest.mark.parametrize("mode", ["json_schema", "regex", "lark"])
def test_completions_match_their_constraint(api: Driver, mode: str) -> None:
    constraint, check = MODES[mode]
    answer = complete(api, max_tokens=200, temperature=0, **constraint)
    assert answer.status == 200, answer.body
    (choice,) = answer.body["choices"]
    assert choice["finish_reason"] == "stop", choice
    check(choice["text"])


def test_unconstrained_output_would_not_match(api: Driver) -> None:
    """What the constraints change: the tiny model's free answer is nothing of the kind."""
    text = chat(api, max_tokens=40, temperature=0).body["choices"][0]["message"]["content"]
    assert not is_json_object(text), text
    assert text not in CHOICES, text
    for pattern in (REGEX, LARK_TEXT, GBNF_TEXT):
        assert not re.fullmatch(pattern, text), (pattern, text)


def test_a_stream_says_the_same(api: Driver) -> None:
    constraint, check = MODES["json_schema"]
    whole = chat(api, max_tokens=200, temperature=0, **constraint).body
    chunks = chat(api, max_tokens=200, temperature=0, stream=True, **constraint).body
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    check(text)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs_are_of_the_masked_distribution(api: Driver) -> None:
    body = chat(
        api, max_tokens=5, temperature=0, logprobs=True, top_logprobs=20, **MODES["choice"][0]
    ).body
    tokens = body["choices"][0]["logprobs"]["content"]
    assert body["choices"][0]["message"]["content"] in CHOICES
    # only beginnings of the choices are allowed, and their probabilities add up to about 1
    top = tokens[0]["top_logprobs"]
    assert len(top) < 20 and all(any(c.startswith(t["token"]) for c in CHOICES) for t in top)
    assert sum(math.exp(t["logprob"]) for t in top) == pytest.approx(1, abs=0.02)


def test_max_tokens_cuts_a_constrained_answer_with_length(api: Driver) -> None:
    answer = chat(api, max_tokens=3, temperature=0, **MODES["json_schema"][0]).body
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"structured_outputs": {"regex": "[0-9"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"json": {"type": "nonsense"}}}, "structured_outputs.json"),
        ({"structured_outputs": {"grammar": "start: missing"}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"grammar": "root ::= ("}}, "structured_outputs.grammar"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {}}, "structured_outputs"),
        (
            {"structured_outputs": {"regex": "a", "choice": ["a"]}},
            "structured_outputs.choice",
        ),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs.regex",
        ),
    ],
)
def test_a_bad_constraint_is_a_400_naming_its_field(
    api: Driver, body: dict[str, Any], field: str
) -> None:
    for stream in (False, True):
        answer = chat(api, max_tokens=5, stream=stream, **body)
        assert answer.status == 400, answer.body
        assert answer.error["param"] == field
        assert answer.error["message"].startswith(f"{field}: ")


def test_text_response_format_is_free(api: Driver) -> None:
    free = chat(api, max_tokens=10, temperature=0).body
    text = chat(api, max_tokens=10, temperature=0, response_format={"type": "text"}).body
    assert text["choices"][0]["message"] == free["choices"][0]["message"]


def test_a_constrained_and_a_free_request_sent_together(http_driver: HttpDriver) -> None:
    """Sent at once, both are decoded in the same batch (tests/providers/ checks the sharing
    step by step): the free one is what it is alone, the constrained one matches."""
    alone = chat(http_driver, max_tokens=30, temperature=0).body["choices"][0]
    constraint, check = MODES["regex"]
    with ThreadPoolExecutor(2) as pool:
        free = pool.submit(chat, http_driver, max_tokens=30, temperature=0)
        guided = pool.submit(chat, http_driver, max_tokens=30, temperature=0, **constraint)
        free_choice = free.result().body["choices"][0]
        guided_choice = guided.result().body["choices"][0]
    assert free_choice["message"] == alone["message"]
    check(guided_choice["message"]["content"])
    assert guided_choice["finish_reason"] == "stop"


def test_the_openai_sdk(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather?"}]
    answer = client.chat.completions.create(
        model=TINY,
        messages=messages,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    )
    check_schema(answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=TINY,
        messages=messages,
        max_tokens=10,
        temperature=1.0,
        seed=3,
        stream=True,
        extra_body={"structured_outputs": {"choice": CHOICES}},
    )
    check_choice("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    text = client.completions.create(
        model=TINY,
        prompt="Code:",
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": REGEX}},
    )
    MODES["regex"][1](text.choices[0].text)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=TINY,
            messages=messages,
            extra_body={"structured_outputs": {"regex": "("}},
        )
    assert "structured_outputs.regex" in bad.value.message


def test_every_prompt_of_a_batch_is_constrained(api: Driver) -> None:
    body = {
        "model": TINY,
        "prompts": ["Colour:", "Another colour:", "A third:"],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 2,
        "structured_outputs": {"choice": CHOICES},
    }
    answer = api.call("inference", "batch_completion", body=body)
    assert answer.status == 200, answer.body
    for completion in answer.body["data"]:
        check_choice(completion["choices"][0]["text"])
