"""LLM Engine's requests as native ones: what is mapped, and what is refused by name."""

from __future__ import annotations

import pytest

from llama_post.apis.llm_engine.models import CompletionRequest, CreateFineTuneRequest
from llama_post.distribution.llm_engine import _csv_rows, _fine_tune, _native
from llama_post.errors import InvalidRequestError


def _job(**hyperparameters: object) -> CreateFineTuneRequest:
    return CreateFineTuneRequest.model_validate(
        {"model": "tiny/llama", "training_file": "file-1", "hyperparameters": hyperparameters}
    )


def test_its_hyperparameters_become_a_lora_job() -> None:
    request = _job(
        lr=0.01,
        epochs=2,
        warmup_ratio=0.5,
        weight_decay=0.1,
        peft_config={"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj"]},
    )
    native = _fine_tune(request, "llmft-1", "llmft-1-train", None, rows=8)
    training, lora = native.training_config, native.algorithm_config
    assert training.n_epochs == 2 and training.optimizer_config is not None
    assert training.optimizer_config.lr == 0.01 and training.optimizer_config.weight_decay == 0.1
    assert training.optimizer_config.num_warmup_steps == 2  # half of 2 epochs of 2 steps
    assert lora.model_dump(include={"type", "rank", "alpha", "dropout", "lora_attn_modules"}) == {
        "type": "LoRA",
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.1,
        "lora_attn_modules": ["q_proj"],
    }


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"n_epochs": 1}, "hyperparameters.n_epochs"),
        ({"peft_config": {"bias": "all"}}, "hyperparameters.peft_config.bias"),
        ({"lr": "fast"}, "hyperparameters.lr"),
        ({"warmup_ratio": 2}, "hyperparameters.warmup_ratio"),
    ],
)
def test_anything_else_is_refused_by_name(hyperparameters: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        _fine_tune(_job(**hyperparameters), "llmft-1", "llmft-1-train", None, rows=8)
    assert refused.value.param == named


def test_a_csv_of_prompt_and_response_becomes_instruct_rows() -> None:
    rows = _csv_rows(b'\xef\xbb\xbfprompt,response\n"Hi, you",Hello\n', "training_file")
    assert rows == [{"prompt": "Hi, you", "completion": "Hello"}]
    with pytest.raises(InvalidRequestError, match="prompt and response"):
        _csv_rows(b"question,answer\nHi,Hello\n", "training_file")


def test_guided_fields_are_structured_outputs() -> None:
    base = {"prompt": "Hi", "max_new_tokens": 4, "temperature": 0, "top_k": -1}
    native = _native("tiny/llama", CompletionRequest.model_validate(base | {"guided_regex": "a+"}))
    assert native.structured_outputs is not None and native.structured_outputs.regex == "a+"
    assert native.top_k is None and native.max_tokens == 4
    scored = _native(
        "tiny/llama", CompletionRequest.model_validate(base | {"return_token_log_probs": True})
    )
    assert scored.logprobs == 0 and scored.structured_outputs is None
    with pytest.raises(InvalidRequestError, match="give one guided field"):
        _native(
            "tiny/llama",
            CompletionRequest.model_validate(base | {"guided_regex": "a", "guided_choice": ["a"]}),
        )
