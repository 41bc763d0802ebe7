"""A model's sampling defaults: from its generation_config.json, or set when it is registered
(run.yaml's `sampling_defaults`); a request that leaves a knob unset gets them, one that sets it
wins."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import TINY, Driver
from tests.tiny import build_tiny_adapter

PROMPT = {"prompt": "Once upon a time", "max_tokens": 12}


@pytest.fixture(scope="session")
def greedy_model(models_dir: Path, tiny_model: Path) -> Path:
    """The tiny model, whose generation_config.json recommends greedy decoding."""
    folder = models_dir / "tiny-greedy"
    if not folder.exists():
        shutil.copytree(tiny_model, folder)
        config = json.loads((folder / "generation_config.json").read_text())
        config.update(do_sample=False, temperature=0.0, top_k=40)
        (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def registered(api: Driver) -> Iterator[list[str]]:
    """Model ids a test registers; unregistered afterwards, adapters first."""
    made: list[str] = []
    yield made
    for model_id in reversed(made):
        api.call("models", "unregister_model", model_id)


def register(api: Driver, made: list[str], source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    model_id = f"tests/sampling-{uuid.uuid4().hex[:6]}"
    result = api.call(
        "models", "register_model", body={"model_id": model_id, "source": source, **extra}
    )
    assert result.status == 200, result.body
    made.append(model_id)
    body: dict[str, Any] = result.body
    return body


def complete(api: Driver, model: str, **knobs: Any) -> str:
    result = api.call("inference", "completion", body={"model": model, **PROMPT, **knobs})
    assert result.status == 200, result.body
    text: str = result.body["choices"][0]["text"]
    return text


def test_a_request_that_sets_nothing_gets_the_models_generation_config(
    api: Driver, greedy_model: Path, registered: list[str]
) -> None:
    model = register(api, registered, {"type": "huggingface", "path": str(greedy_model)})
    assert model["generation_config"] == {
        "temperature": 0.0,
        "top_p": None,
        "top_k": 40,
        "repetition_penalty": None,
    }
    assert model["sampling_defaults"]["temperature"] is None
    greedy = complete(api, TINY, temperature=0)
    assert complete(api, model["id"], seed=1) == greedy
    assert complete(api, model["id"], seed=2) == greedy
    # A request's own value wins: the same as the plain model with the same knobs.
    assert complete(api, model["id"], temperature=1.0, top_k=40, seed=7) == complete(
        api, TINY, temperature=1.0, top_k=40, seed=7
    )


def test_registered_defaults_win_over_the_models_own_and_adapters_sample_as_their_base(
    api: Driver, greedy_model: Path, models_dir: Path, tiny_model: Path, registered: list[str]
) -> None:
    model = register(
        api,
        registered,
        {"type": "huggingface", "path": str(greedy_model)},
        sampling_defaults={"temperature": 1.3, "top_p": 0.9},
    )
    assert model["sampling_defaults"] == {
        "temperature": 1.3,
        "top_p": 0.9,
        "top_k": None,
        "repetition_penalty": None,
    }
    # temperature and top_p as registered, top_k from generation_config.json
    expected = complete(api, TINY, temperature=1.3, top_p=0.9, top_k=40, seed=3)
    assert complete(api, model["id"], seed=3) == expected

    adapter_folder = build_tiny_adapter(models_dir / "adapter-sampling", tiny_model, seed=5)
    adapter = register(
        api,
        registered,
        {"type": "adapter", "path": str(adapter_folder), "base_model": model["id"]},
    )
    assert adapter["generation_config"] == {
        "temperature": 1.3,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": None,
    }


def test_bad_sampling_defaults_are_refused_by_name(
    api: Driver, greedy_model: Path, registered: list[str]
) -> None:
    result = api.call(
        "models",
        "register_model",
        body={
            "model_id": f"tests/sampling-{uuid.uuid4().hex[:6]}",
            "source": {"type": "huggingface", "path": str(greedy_model)},
            "sampling_defaults": {"temperature": 5},
        },
    )
    assert result.status == 422, result.body
    assert result.error["param"] == "sampling_defaults.temperature"
