"""tinker-cookbook 0.6.1 (in the tinker SDK's environment) trains against llama-post: its own
supervised loop, `recipes/sl_loop.py`, with only its configuration changed, and an RL loop in
the shape of its `recipes/rl_loop.py` (see `tinker_cookbook_flow.py`).

The base model is the tiny one, served under a name the cookbook knows
(`Qwen/Qwen3-4B-Instruct-2507`, whose recommended renderer is `qwen3_instruct`: ChatML) and
given that renderer's chat template, so that the recipe picks a renderer matching it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envs import client_python, run_flow
from tests.support import Server, create_key, distribution
from tests.tiny import build_tiny_model

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def cookbook(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_model: Path
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    python = client_python("tinker-0.38")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    tokenizer.chat_template = CHATML
    weights = build_tiny_model(models_dir / "tiny-chatml", tokenizer)
    home = tmp_path_factory.mktemp("tinker-cookbook")
    config = distribution(home, tiny_model) | {"auth": {"enabled": True}}
    source = {"type": "huggingface", "path": str(weights)}
    config["models"].append({"model_id": MODEL, "source": source})
    server = Server(config, home)
    key = create_key(server.config, "alice")
    server.start(timeout=60)
    work = home / "work"
    work.mkdir()
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(home / "hf")}
    try:
        report = run_flow(
            python,
            "tinker_cookbook_flow.py",
            server.url,
            MODEL,
            str(weights),
            str(work),
            timeout=500,
            env={"TINKER_API_KEY": key, "TINKER_TELEMETRY": "0", **offline},
        )
    finally:
        server.stop()
    seen: dict[str, Any] = json.loads(report)
    return seen


def test_the_recipe_picks_a_renderer_matching_the_chat_template(cookbook: dict[str, Any]) -> None:
    assert cookbook["renderer_matches"]


def test_the_cookbooks_supervised_loop_lowers_its_loss(cookbook: dict[str, Any]) -> None:
    nll = [m["train_mean_nll"] for m in cookbook["sl_metrics"]]
    assert len(nll) == 6, cookbook["sl_metrics"]
    # each step's loss is over another batch: the trend, not every step
    assert max(nll[-2:]) < min(nll[:2]) - 0.5, nll
    saved = [c["name"] for c in cookbook["sl_checkpoints"]]
    assert saved == ["000002", "000004", "final"], cookbook["sl_checkpoints"]
    final = cookbook["sl_checkpoints"][-1]
    assert final["state_path"].endswith("/weights/final")
    assert final["sampler_path"].endswith("/sampler_weights/final")


def test_an_rl_loop_raises_the_reward(cookbook: dict[str, Any]) -> None:
    rewards = cookbook["rl_rewards"]
    assert len(rewards) == 8 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.3, rewards
