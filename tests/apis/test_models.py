"""The Models API, and LoRA adapters served over their base model."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import TINY, Driver, HttpDriver, Result
from tests.tiny import build_tiny_adapter


@pytest.fixture(scope="session")
def adapters(models_dir: Path, tiny_model: Path) -> list[Path]:
    return [build_tiny_adapter(models_dir / f"adapter-{i}", tiny_model, seed=i) for i in (1, 2)]


def register(api: Driver, model_id: str, source: dict[str, Any]) -> Result:
    return api.call("models", "register_model", body={"model_id": model_id, "source": source})


def test_the_registered_model_describes_itself(api: Driver) -> None:
    listed = api.call("models", "list_models").body
    assert listed["object"] == "list"
    tiny = next(m for m in listed["data"] if m["id"] == TINY)
    assert tiny["object"] == "model" and tiny["kind"] == "base"
    assert tiny["context_length"] == 256 and tiny["has_chat_template"] is True
    assert 3_000_000 < tiny["parameter_count"] < 4_000_000
    assert api.call("models", "get_model", TINY).body == tiny


def test_adapters_register_serve_and_unregister(api: Driver, adapters: list[Path]) -> None:
    model_id = f"tests/adapter-{uuid.uuid4().hex[:6]}"
    made = register(
        api, model_id, {"type": "adapter", "path": str(adapters[0]), "base_model": TINY}
    )
    assert made.status == 200, made.body
    assert made.body["kind"] == "adapter" and made.body["base_model"] == TINY
    base_params = api.call("models", "get_model", TINY).body["parameter_count"]
    assert made.body["parameter_count"] > base_params

    body = {"prompt": "Once upon", "max_tokens": 12, "temperature": 0}
    tuned = api.call("inference", "completion", body={"model": model_id, **body}).body
    plain = api.call("inference", "completion", body={"model": TINY, **body}).body
    assert tuned["choices"][0]["text"] != plain["choices"][0]["text"]

    assert (
        register(
            api, model_id, {"type": "adapter", "path": str(adapters[0]), "base_model": TINY}
        ).status
        == 409
    )
    assert api.call("models", "unregister_model", TINY).status == 409  # it has adapters
    gone = api.call("models", "unregister_model", model_id)
    assert gone.body == {"id": model_id, "object": "model", "deleted": True}
    assert api.call("models", "get_model", model_id).status == 404
    assert api.call("inference", "completion", body={"model": model_id, **body}).status == 404


def test_bad_registrations(api: Driver, adapters: list[Path], tmp_path: Path) -> None:
    outside = register(api, "tests/outside", {"type": "huggingface", "path": str(tmp_path)})
    assert outside.status == 404 and "outside" in outside.error["message"]
    traversal = register(
        api,
        "tests/up",
        {"type": "adapter", "base_model": TINY, "path": str(adapters[0]) + "/../../../.."},
    )
    assert traversal.status == 404
    no_base = register(
        api,
        "tests/orphan",
        {"type": "adapter", "path": str(adapters[0]), "base_model": "missing/base"},
    )
    assert no_base.status == 404 and no_base.error["param"] == "source.base_model"
    not_a_model = register(api, "tests/empty", {"type": "huggingface", "path": str(adapters[0])})
    assert (
        not_a_model.status == 404
        and "not a Hugging Face model folder" in not_a_model.error["message"]
    )
    remote = register(
        api, "tests/remote", {"type": "provider_model", "provider_model_id": "org/elsewhere"}
    )
    assert remote.status == 404 and remote.error["param"] == "source.provider_model_id"
    for bad_id in ["../x", "a//b", "/abs", "a/../b", "a/."]:
        refused = register(api, bad_id, {"type": "huggingface", "path": "x"})
        assert refused.status == 422 and refused.error["param"] == "model_id", bad_id
    package = register(
        api, "tests/pkg", {"type": "gguf", "package": "no_such_pkg", "file": "x.gguf"}
    )
    assert package.status == 404 and package.error["param"] == "source.package"


def test_interleaved_base_and_adapters_match_fresh_peft(
    http_driver: HttpDriver, adapters: list[Path], tiny_model: Path
) -> None:
    """Requests for the base and two adapters, sent together, each get what peft alone gives."""
    ids = [f"tests/mix-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    for model_id, path in zip(ids, adapters, strict=True):
        assert (
            register(
                http_driver, model_id, {"type": "adapter", "path": str(path), "base_model": TINY}
            ).status
            == 200
        )
    prompts = ["Once upon a time", "The weather today", "In 1492", "Dear diary"]
    jobs = [(model, prompt) for prompt in prompts for model in [TINY, *ids]]

    def ask(job: tuple[str, str]) -> str:
        body = {"model": job[0], "prompt": job[1], "max_tokens": 16, "temperature": 0}
        result = http_driver.call("inference", "completion", body=body)
        assert result.status == 200, result.body
        text: str = result.body["choices"][0]["text"]
        return text

    with ThreadPoolExecutor(len(jobs)) as pool:
        served = list(pool.map(ask, jobs))
    expected = _fresh_peft(tiny_model, {TINY: None, ids[0]: adapters[0], ids[1]: adapters[1]}, jobs)
    assert served == expected
    assert len(set(served)) > len(prompts)  # the adapters really differ from the base
    for model_id in ids:
        http_driver.call("models", "unregister_model", model_id)


def _fresh_peft(
    base: Path, adapters: dict[str, Path | None], jobs: list[tuple[str, str]]
) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(base))
    out: list[str] = []
    for model_id, prompt in jobs:
        model: Any = AutoModelForCausalLM.from_pretrained(str(base))
        path = adapters[model_id]
        if path is not None:
            model = PeftModel.from_pretrained(model, str(path))
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=16, do_sample=False)
        out.append(
            tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return out
