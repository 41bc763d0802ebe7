"""Completions that score their prompt, as lm-eval's log-likelihood tasks ask for them: `echo`
with `logprobs` (each prompt token's logprob, the first null, and its likeliest alternatives) and
`max_tokens: 0`, the numbers equal to transformers' own log_softmax on the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import HTTP_ONLY, TINY, Driver, Result

PROMPTS = ["Once upon a time there was a little", "The cat sat"]


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Any:
    """Each prompt token's logprob and top-3 under plain transformers, in fp32 as served."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    model.eval()

    def score(ids: list[int]) -> tuple[list[float], list[list[float]]]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        raw = torch.log_softmax(logits, dim=-1)
        chosen = raw.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return chosen.tolist(), raw.topk(3, dim=-1).values.tolist()

    return score


def complete(api: Driver, **body: Any) -> Result:
    return api.call("inference", "completion", body={"model": TINY, "temperature": 0, **body})


def test_echo_with_max_tokens_0_scores_the_prompt_only(
    api: Driver, tokenizer: Any, reference: Any
) -> None:
    answer = complete(api, prompt=PROMPTS[0], echo=True, logprobs=3, max_tokens=0)
    assert answer.status == 200, answer.body
    (choice,) = answer.body["choices"]
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    assert choice["text"] == PROMPTS[0] and choice["finish_reason"] == "length"
    assert answer.body["usage"]["completion_tokens"] == 0
    assert answer.body["usage"]["prompt_tokens"] == len(ids)
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    chosen, tops = reference(ids)
    assert logprobs["token_logprobs"][1:] == pytest.approx(chosen, abs=1e-4)
    served_tops = [v for top in logprobs["top_logprobs"][1:] for v in sorted(top.values())[::-1]]
    assert served_tops == pytest.approx([v for top in tops for v in top], abs=1e-4)
    offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(ids))]
    assert logprobs["text_offset"] == offsets


def test_lm_evals_request_batched_token_ids_with_one_token_more(
    api: Driver, tokenizer: Any, reference: Any
) -> None:
    """lm-eval's `local-completions` sends its batch as lists of token ids, with echo, logprobs 1
    and max_tokens 1, and reads each choice's prompt part (it drops the generated last)."""
    batch = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    answer = complete(api, prompt=batch, echo=True, logprobs=1, max_tokens=1, seed=1234)
    assert answer.status == 200, answer.body
    choices = sorted(answer.body["choices"], key=lambda c: c["index"])
    for ids, choice in zip(batch, choices, strict=True):
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(ids) + 1
        chosen, tops = reference(ids)
        assert logprobs["token_logprobs"][1 : len(ids)] == pytest.approx(chosen, abs=1e-4)
        for top, best in zip(logprobs["top_logprobs"][1 : len(ids)], tops, strict=True):
            assert list(top.values()) == pytest.approx(best[:1], abs=1e-4)
        alone = complete(api, prompt=ids, max_tokens=1).body["choices"][0]["text"]
        assert choice["text"] == tokenizer.decode(ids) + alone


@HTTP_ONLY
def test_echo_without_logprobs_and_streamed(api: Driver, reference: Any, tokenizer: Any) -> None:
    plain = complete(api, prompt=PROMPTS[1], max_tokens=4).body["choices"][0]["text"]
    echoed = complete(api, prompt=PROMPTS[1], max_tokens=4, echo=True).body["choices"][0]
    assert echoed["text"] == PROMPTS[1] + plain and echoed["logprobs"] is None

    chunks = complete(api, prompt=PROMPTS[1], max_tokens=4, echo=True, logprobs=0, stream=True).body
    assert "".join(c["choices"][0]["text"] for c in chunks) == PROMPTS[1] + plain
    first = chunks[0]["choices"][0]["logprobs"]
    ids = tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    assert first["token_logprobs"][0] is None
    assert first["token_logprobs"][1 : len(ids)] == pytest.approx(reference(ids)[0], abs=1e-4)


def test_what_cannot_be_scored_is_refused_by_name(api: Driver) -> None:
    nothing = complete(api, prompt="hi", max_tokens=0)
    assert nothing.status == 400 and nothing.error["param"] == "max_tokens", nothing.body
    assert "echo" in nothing.error["message"]
    over = complete(api, prompt=[[5, 6], [10**9]], max_tokens=0, echo=True)
    assert over.status == 400 and over.error["param"] == "prompt[1]", over.body
    chat = api.call(
        "inference",
        "chat_completion",
        body={"model": TINY, "messages": [{"role": "user", "content": "hi"}], "echo": True},
    )
    assert chat.status == 422 and chat.error["param"] == "echo"
