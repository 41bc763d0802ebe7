"""`text_similarity`: rapidfuzz for `fuzzy_match`, NLTK for BLEU, GLEU and METEOR, Google's
`rouge-score` for ROUGE-N and ROUGE-L (the F-measure).

Text is split into words by one rule (runs of word characters, or single punctuation marks,
lower-cased) so that no tokenizer data is needed. `cosine` would need an embedding model and is
refused by name; so is `meteor` where NLTK's WordNet data is not installed (nothing is downloaded
at run time).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from llama_post.apis.post_training.graders import TextSimilarityGrader
from llama_post.errors import InvalidRequestError
from llama_post.graders.templates import compile_template, render

WORDS = re.compile(r"\w+|[^\w\s]")

Metric = Callable[[str, str], float]


def words(text: str) -> list[str]:
    return WORDS.findall(text.lower())


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(text, reference)) / 100.0


def bleu(text: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    # Smoothing (Lin and Och's method 1) keeps a short answer missing one n-gram order above 0.
    smooth = SmoothingFunction().method1
    return float(sentence_bleu([words(reference)], words(text), smoothing_function=smooth))


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([words(reference)], words(text)))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([words(reference)], words(text)))


@cache
def _rouge(kind: str) -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer([kind])


def rouge(kind: str) -> Metric:
    def score(text: str, reference: str) -> float:
        return float(_rouge(kind).score(reference, text)[kind].fmeasure)

    return score


METRICS: dict[str, Metric] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": rouge("rougeL"),
}


def wordnet_installed() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


def refusal(metric: str) -> str | None:
    """Why `metric` cannot be served here, or None."""
    if metric == "cosine":
        return "cosine needs an embedding model, which graders here do not have"
    if metric == "meteor" and not wordnet_installed():
        return "meteor needs NLTK's WordNet data, which is not installed on this server"
    return None


class TextSimilarity:
    def __init__(self, grader: TextSimilarityGrader, where: str) -> None:
        why = refusal(grader.evaluation_metric)
        if why is not None:
            field = f"{where}.evaluation_metric"
            served = ", ".join(m for m in METRICS if refusal(m) is None)
            raise InvalidRequestError(f"{field}: {why}; use one of {served}", param=field)
        self.input = compile_template(grader.input, f"{where}.input")
        self.reference = compile_template(grader.reference, f"{where}.reference")
        self.metric = METRICS[grader.evaluation_metric]
        self.threshold = grader.pass_threshold
        self.where = where

    def score(self, scope: dict[str, Any]) -> float:
        text = render(self.input, f"{self.where}.input", scope)
        reference = render(self.reference, f"{self.where}.reference", scope)
        similarity = self.metric(text, reference)
        if self.threshold is None:
            return similarity
        return float(similarity >= self.threshold)
