"""The transformers engine prefills prompts that are scored (their logits of every position
kept) in groups of at most SCORING_TOKENS padded tokens: the logits cost tokens x vocabulary."""

from __future__ import annotations

from providers.inline.inference.transformers.engine import (
    SCORING_TOKENS,
    Detokenizer,
    Sequence,
    _scoring_groups,
)
from providers.inline.inference.transformers.sampling import Sampler, SamplingParams


def scored(length: int) -> Sequence:
    params = SamplingParams(max_tokens=0, prompt_logprobs=1)
    prompt = [1] * length
    return Sequence(
        prompt=prompt,
        params=params,
        adapter=None,
        sampler=Sampler(params, prompt, vocab=8, device="cpu"),
        detok=Detokenizer(None, ()),
        sink=lambda event: None,
        model="m",
    )


def test_scored_prompts_are_prefilled_within_the_token_budget() -> None:
    quarter = SCORING_TOKENS // 4
    seqs = [scored(quarter) for _ in range(9)] + [scored(SCORING_TOKENS * 2), scored(8)]
    groups = _scoring_groups(seqs)
    assert [len(g) for g in groups] == [4, 4, 1, 1, 1]  # a longer prompt goes alone
    assert [id(s) for g in groups for s in g] == [id(s) for s in seqs]  # in the order they came
    for group in groups:
        assert len(group) == 1 or len(group) * max(len(s.prompt) for s in group) <= SCORING_TOKENS
