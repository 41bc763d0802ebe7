"""The engine's adapter routing: a step whose rows all want the base, or all one adapter, runs
without PEFT's per-row routing and gives what the routing gives; the model comes back untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from providers.inline.inference.transformers.adapters import BASE, Routing
from tests.tiny import build_tiny_adapter


@pytest.fixture(scope="module")
def served(tiny_model: Path, models_dir: Path) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    first = build_tiny_adapter(models_dir / "routing-a", tiny_model, seed=1)
    second = build_tiny_adapter(models_dir / "routing-b", tiny_model, seed=2)
    torch.manual_seed(3)  # a DoRA adapter: routed by PEFT, never merged here
    dora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)),
        LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False),
    )
    dora.save_pretrained(str(models_dir / "routing-dora"))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(first), adapter_name="a"
    )
    model.load_adapter(str(second), adapter_name="b")
    model.load_adapter(str(models_dir / "routing-dora"), adapter_name="dora")
    return model.eval()


def _alone(tiny_model: Path, folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """The logits of a fresh PEFT model holding only that adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    with torch.inference_mode():
        logits: torch.Tensor = PeftModel.from_pretrained(base, str(folder)).eval()(ids).logits
    return logits


@pytest.mark.parametrize(
    ("wanted", "how"),
    [
        ([None, None], "swapped"),
        (["a", "a"], "swapped"),
        (["b", "b"], "swapped"),
        (["a", None], "routed"),
        (["a", "b"], "routed"),
        (["dora", "dora"], "peft"),
    ],
)
def test_a_step_runs_as_peft_alone_would(
    served: Any, tiny_model: Path, models_dir: Path, wanted: list[str | None], how: str
) -> None:
    model = served
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    params = {name: p.clone() for name, p in model.named_parameters()}
    modules = [(name, type(m)) for name, m in model.named_modules()]
    routing = Routing()
    with torch.inference_mode():
        if how == "peft":
            expected = _alone(tiny_model, models_dir / "routing-dora", ids)
        else:
            expected = model(ids, adapter_names=[w or BASE for w in wanted]).logits
        extra = routing.route(model, wanted)
        assert ("adapter_names" in extra) == (how == "routed")
        got = model(ids, **extra).logits
        wrapped = [name for name, m in model.named_modules() if "lora_A" in name]
        routing.release()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    assert (not wrapped) == (how == "swapped")  # PEFT's layers were out of the forward
    assert [(name, type(m)) for name, m in model.named_modules()] == modules
    for name, p in model.named_parameters():  # the base's weights were never written
        assert torch.equal(p, params[name]), name
