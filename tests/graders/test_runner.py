"""Each grader kind on right and wrong answers, with the scores worked out by hand; templates;
multi's formula; what is refused when a grader is built (naming the field) and what a sample's
failure gives (0 and the error)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from llama_post.apis.post_training.graders import Grader
from llama_post.errors import InvalidRequestError
from llama_post.graders import GraderRunner, Sample

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)
OUTPUT = "{{sample.output_text}}"
ANSWER = "{{item.answer}}"


def runner(**grader: Any) -> GraderRunner:
    return GraderRunner(GRADER.validate_python({"name": "g", **grader}))


def score(grader: GraderRunner, answer: str, text: str) -> float:
    result = grader.grade({"answer": answer}, Sample(text))
    assert result.error is None, result.error
    return result.score


@pytest.mark.parametrize(
    ("operation", "text", "expected"),
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "Lyon", 1.0),
        ("ne", "Paris", 0.0),
        ("like", "It is Paris.", 1.0),
        ("like", "It is PARIS.", 0.0),
        ("ilike", "It is PARIS.", 1.0),
        ("ilike", "It is Lyon.", 0.0),
    ],
)
def test_string_check(operation: str, text: str, expected: float) -> None:
    check = runner(type="string_check", input=OUTPUT, reference=ANSWER, operation=operation)
    assert score(check, "Paris", text) == expected


REFERENCE = "the cat sat on the mat"
CLOSE = "the cat sat on a mat"


@pytest.mark.parametrize(
    ("metric", "text", "expected"),
    [
        ("fuzzy_match", "Paris", 1.0),
        # one substitution is two edits of the 10 characters (Indel distance): 1 - 2/10
        ("fuzzy_match", "Parjs", 0.8),
        ("bleu", REFERENCE, 1.0),
        # n-gram precisions 5/6, 3/5, 2/4, 1/3, no brevity penalty: their geometric mean
        ("bleu", CLOSE, (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25),
        # 5 + 3 + 2 + 1 shared n-grams (1 to 4) of 18 on either side
        ("gleu", CLOSE, 11 / 18),
        ("rouge_1", CLOSE, 5 / 6),
        ("rouge_2", CLOSE, 3 / 5),
        ("rouge_5", CLOSE, 0.0),
        ("rouge_l", CLOSE, 5 / 6),
        ("rouge_l", "mat", 2 * (1 * 1 / 6) / (1 + 1 / 6)),
    ],
)
def test_text_similarity(metric: str, text: str, expected: float) -> None:
    answer = "Paris" if metric == "fuzzy_match" else REFERENCE
    similar = runner(
        type="text_similarity", input=OUTPUT, reference=ANSWER, evaluation_metric=metric
    )
    assert score(similar, answer, text) == pytest.approx(expected)


def test_a_pass_threshold_makes_the_similarity_pass_or_fail() -> None:
    similar = runner(
        type="text_similarity",
        input=OUTPUT,
        reference=ANSWER,
        evaluation_metric="rouge_1",
        pass_threshold=0.8,
    )
    assert score(similar, REFERENCE, CLOSE) == 1.0  # 5/6
    assert score(similar, REFERENCE, "the cat") == 0.0  # 1/2


def test_regex_and_json_schema_match() -> None:
    upper = runner(type="regex", input=OUTPUT, pattern=r"^[A-Z]+$")
    assert [score(upper, "", t) for t in ("PARIS", "Paris", "PARIS!")] == [1.0, 0.0, 0.0]
    schema = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}
    shaped = runner(type="json_schema", input=OUTPUT, schema=schema)
    answers = ('{"sum": 7}', '{"sum": "7"}', "{}", "seven")
    assert [score(shaped, "", t) for t in answers] == [1.0, 0.0, 0.0, 0.0]


def test_templates_read_the_row_and_the_sample() -> None:
    check = runner(
        type="string_check",
        input="{{sample.output_json.city}} in {{ item['country'] | upper }}",
        reference="{{item.answer}} in FRANCE",
        operation="eq",
    )
    item = {"answer": "Paris", "country": "France"}
    right = check.grade(item, Sample('{"city": "Paris"}', {"city": "Paris"}))
    wrong = check.grade(item, Sample('{"city": "Lyon"}', {"city": "Lyon"}))
    assert (right.score, wrong.score) == (1.0, 0.0)


def test_a_multi_grader_combines_named_scores_by_its_formula() -> None:
    multi = runner(
        type="multi",
        graders={
            "exact": {
                "type": "string_check",
                "name": "e",
                "input": OUTPUT,
                "reference": ANSWER,
                "operation": "eq",
            },
            "upper": {"type": "regex", "name": "u", "input": OUTPUT, "pattern": "^[A-Z]+$"},
        },
        calculate_output="0.75 * exact + 0.25 * upper^2 + min(exact, upper)",
    )
    both = multi.grade({"answer": "PARIS"}, Sample("PARIS"))
    assert (both.score, both.sub_scores, both.error) == (2.0, {"exact": 1.0, "upper": 1.0}, None)
    one = multi.grade({"answer": "PARIS"}, Sample("LYON"))
    assert (one.score, one.sub_scores) == (0.25, {"exact": 0.0, "upper": 1.0})


def test_a_formula_failing_on_a_sample_scores_it_0_with_the_error() -> None:
    multi = runner(
        type="multi",
        graders={"u": {"type": "regex", "name": "u", "input": OUTPUT, "pattern": "^[A-Z]+$"}},
        calculate_output="1 / u",
    )
    assert multi.grade({}, Sample("PARIS")).score == 1.0
    failed = multi.grade({}, Sample("paris"))
    assert (failed.score, failed.error_kind) == (0.0, "formula")
    assert failed.error is not None and "division by zero" in failed.error


def test_a_field_the_row_lacks_scores_0_with_the_error_and_the_batch_goes_on() -> None:
    check = runner(type="string_check", input=OUTPUT, reference=ANSWER, operation="eq")
    results = check.grade_many([({"answer": "A"}, Sample("A")), ({}, Sample("A"))])
    assert results[0].score == 1.0 and results[0].error is None
    assert (results[1].score, results[1].error_kind) == (0.0, "invalid_variable")
    assert results[1].error is not None and "grader.reference" in results[1].error
    assert "answer" in results[1].error


@pytest.mark.parametrize(
    ("grader", "field"),
    [
        ({"type": "regex", "input": "{{ sample.output_text", "pattern": "a"}, "grader.input"),
        ({"type": "regex", "input": OUTPUT, "pattern": "(unclosed"}, "grader.pattern"),
        ({"type": "regex", "input": "{{ answer }}", "pattern": "a"}, "grader.input"),
        (  # no statements, calls or loops: rendering costs what the text and fields cost
            {
                "type": "regex",
                "input": "{% for i in range(99) %}{{ i }}{% endfor %}",
                "pattern": "a",
            },
            "grader.input",
        ),
        (
            {"type": "regex", "input": "{{ item.a.replace('a', 'b') }}", "pattern": "a"},
            "grader.input",
        ),
        ({"type": "json_schema", "input": OUTPUT, "schema": {"type": "text"}}, "grader.schema"),
        (
            {"type": "string_check", "input": OUTPUT, "reference": "{% if %}", "operation": "eq"},
            "grader.reference",
        ),
        (
            {
                "type": "text_similarity",
                "input": OUTPUT,
                "reference": ANSWER,
                "evaluation_metric": "cosine",
            },
            "grader.evaluation_metric",
        ),
        (
            {
                "type": "multi",
                "calculate_output": "a + b",
                "graders": {"a": {"type": "regex", "name": "a", "input": OUTPUT, "pattern": "x"}},
            },
            "grader.calculate_output",
        ),
        (
            {
                "type": "multi",
                "calculate_output": "__import__('os').getpid()",
                "graders": {"a": {"type": "regex", "name": "a", "input": OUTPUT, "pattern": "x"}},
            },
            "grader.calculate_output",
        ),
        (
            {
                "type": "multi",
                "calculate_output": "a",
                "graders": {"a": {"type": "regex", "name": "a", "input": OUTPUT, "pattern": "("}},
            },
            "grader.graders.a.pattern",
        ),
        (
            {
                "type": "score_model",
                "model": "m",
                "range": [1, 1],
                "input": [{"role": "user", "content": OUTPUT}],
            },
            "grader.range",
        ),
        (
            {
                "type": "score_model",
                "model": "m",
                "sampling_params": {"reasoning_effort": "low"},
                "input": [{"role": "user", "content": OUTPUT}],
            },
            "grader.sampling_params.reasoning_effort",
        ),
        (
            {
                "type": "score_model",
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{"}]}],
            },
            "grader.input[0].content[0].text",
        ),
        ({"type": "python", "source": "def grade(sample, item): return 1"}, "grader.type"),
    ],
)
def test_an_invalid_grader_is_refused_naming_the_field(grader: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        runner(**grader)
    assert refused.value.param == field
    assert refused.value.message.startswith(field)


class Answers:
    """A ModelScorer answering from a list, recording what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []

    def __call__(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        self.asked.append((model, messages, sampling))
        return self.answers.pop(0)


def test_score_model_parses_the_first_number_and_checks_the_range() -> None:
    answers = Answers("Score: 7 of 10", "about -2", "no idea", "8.5")
    grader = GRADER.validate_python(
        {
            "type": "score_model",
            "name": "judge",
            "model": "tiny/llama",
            "range": [0, 10],
            "sampling_params": {"temperature": 0, "max_completions_tokens": 4, "seed": 3},
            "input": [
                {"role": "developer", "content": "Grade against {{item.answer}}."},
                {"role": "user", "content": [{"type": "input_text", "text": OUTPUT}]},
            ],
        }
    )
    judge = GraderRunner(grader, scorer=answers)
    results = [judge.grade({"answer": "Paris"}, Sample(t)) for t in ("Paris", "Lyon", "x", "y")]
    assert [r.score for r in results] == [7.0, 0.0, 0.0, 8.5]
    assert [r.error_kind for r in results] == [None, "model_parse", "model_parse", None]
    assert answers.asked[0] == (
        "tiny/llama",
        [
            {"role": "system", "content": "Grade against Paris."},
            {"role": "user", "content": "Paris"},
        ],
        {"max_tokens": 4, "temperature": 0, "seed": 3},
    )
