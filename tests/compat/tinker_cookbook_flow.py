"""tinker-cookbook 0.6.1's own supervised loop (`tinker_cookbook/recipes/sl_loop.py`), unchanged,
and an RL loop written the way its `recipes/rl_loop.py` is, against llama-post: run in the pinned
SDK's environment (`pins/tinker-0.38.txt`, `pins/tinker-0.38.nodeps.txt`). Arguments: the
server's URL, the base model's name on the server (one the cookbook knows, so that it picks its
renderer), the folder of its weights and tokenizer, and a working folder. The key is in
`TINKER_API_KEY`. Its last line is a JSON report.

Only the recipe's configuration changes. Its hub names resolve to local folders, as they do for
`transformers` and `datasets` when a folder of that name is in the working directory: the
model's name to the tokenizer's folder, and `HuggingFaceH4/no_robots` to the cookbook's own
`example_data/conversations.jsonl` (the environment has the hubs turned off)."""

from __future__ import annotations

import importlib.resources
import json
import os
import sys
from pathlib import Path
from typing import Any

import tinker
import torch
from tinker import types
from tinker.types.tensor_data import TensorData
from tinker_cookbook import model_info, renderers
from tinker_cookbook.recipes import sl_loop
from tinker_cookbook.tokenizer_utils import get_tokenizer

QUESTIONS = ["Name a colour.", "Say something.", "Pick a fruit.", "What is your name?"]
RL_STEPS, GROUP, RL_TOKENS, RL_RATE = 8, 16, 1, 3e-2


def configure(model_name: str, weights: str, work: Path) -> None:
    """The working folder the recipe runs in: its hub names, as local folders."""
    os.chdir(work)
    model = Path(model_name)
    model.parent.mkdir(parents=True, exist_ok=True)
    model.symlink_to(weights)
    dataset = Path("HuggingFaceH4/no_robots")
    dataset.mkdir(parents=True)
    rows = importlib.resources.files("tinker_cookbook") / "example_data" / "conversations.jsonl"
    (dataset / "train.jsonl").write_text(rows.read_text())


def renderer_matches_template(model_name: str) -> bool:
    """The cookbook's renderer for the model writes what its chat template writes."""
    tokenizer = get_tokenizer(model_name)
    renderer = renderers.get_renderer(
        model_info.get_recommended_renderer_name(model_name), tokenizer
    )
    rows = Path("HuggingFaceH4/no_robots/train.jsonl").read_text().splitlines()[:8]
    for row in rows:
        prompt = json.loads(row)["messages"][:-1]
        mine = renderer.build_generation_prompt(prompt).to_ints()
        theirs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        theirs = theirs if isinstance(theirs, list) else theirs["input_ids"]  # transformers 5
        if list(mine) != list(theirs):
            return False
    return True


def supervised(url: str, model_name: str, log_path: Path) -> list[dict[str, Any]]:
    config = sl_loop.Config(
        base_url=url,
        log_path=str(log_path),
        model_name=model_name,
        batch_size=16,
        learning_rate=1e-2,
        max_length=256,  # the tiny model's context
        lora_rank=8,
        save_every=2,
        max_steps=6,
    )
    sl_loop.main(config)
    lines = (log_path / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def rl(url: str, model_name: str) -> list[float]:
    """rl_loop.py's loop on a toy task: each prompt's reward is for starting with one token
    (the one a seeded sample from the untrained model started with), among the 4 likeliest."""
    tokenizer = get_tokenizer(model_name)
    renderer = renderers.get_renderer(
        model_info.get_recommended_renderer_name(model_name), tokenizer
    )
    service_client = tinker.ServiceClient(base_url=url)
    training_client = service_client.create_lora_training_client(
        base_model=model_name, rank=8, train_mlp=False, train_attn=False
    ).result()
    prompts = [
        renderer.build_generation_prompt([{"role": "user", "content": q}]) for q in QUESTIONS
    ]
    stop = renderer.get_stop_sequences()
    adam_params = types.AdamParams(learning_rate=RL_RATE, beta1=0.9, beta2=0.95, eps=1e-8)
    start = training_client.save_weights_and_get_sampling_client().result()
    first = types.SamplingParams(max_tokens=1, top_k=4, seed=0)
    targets = [start.sample(p, 1, first).result().sequences[0].tokens[0] for p in prompts]

    rewards: list[float] = []
    for step in range(RL_STEPS):
        sampling_client = training_client.save_weights_and_get_sampling_client().result()
        sampling_params = types.SamplingParams(  # seeded: the same run each time
            max_tokens=RL_TOKENS, top_k=4, temperature=1.0, stop=stop, seed=1000 * (step + 1)
        )
        futures_P = [
            sampling_client.sample(prompt=p, num_samples=GROUP, sampling_params=sampling_params)
            for p in prompts
        ]
        datums_D: list[types.Datum] = []
        rewards_P: list[float] = []
        for future, prompt, target in zip(futures_P, prompts, targets, strict=True):
            sequences = future.result().sequences
            rewards_G = [1.0 if s.tokens[:1] == [target] else 0.0 for s in sequences]
            mean_reward = sum(rewards_G) / len(rewards_G)
            rewards_P.append(mean_reward)
            advantages_G = [r - mean_reward for r in rewards_G]
            if all(a == 0.0 for a in advantages_G):
                continue
            for sequence, advantage in zip(sequences, advantages_G, strict=True):
                sampled_tokens, logprobs = sequence.tokens, sequence.logprobs
                assert logprobs is not None
                ob_len = prompt.length - 1
                model_input = prompt.append(types.EncodedTextChunk(tokens=sampled_tokens[:-1]))
                target_tokens = [0] * ob_len + sampled_tokens
                padded_logprobs = [0.0] * ob_len + logprobs
                padded_advantages = [0.0] * ob_len + [advantage] * (model_input.length - ob_len)
                loss_fn_inputs = {
                    "target_tokens": TensorData.from_torch(torch.tensor(target_tokens)),
                    "logprobs": TensorData.from_torch(torch.tensor(padded_logprobs)),
                    "advantages": TensorData.from_torch(torch.tensor(padded_advantages)),
                }
                datums_D.append(types.Datum(model_input=model_input, loss_fn_inputs=loss_fn_inputs))
        rewards.append(sum(rewards_P) / len(rewards_P))
        if datums_D:
            fwd_bwd_future = training_client.forward_backward(datums_D, "importance_sampling")
            optim_step_future = training_client.optim_step(adam_params)
            fwd_bwd_future.result()
            optim_step_future.result()
    service_client.close("success").result()
    return rewards


def main(url: str, model_name: str, weights: str, work: str) -> dict[str, Any]:
    configure(model_name, weights, Path(work))
    return {
        "renderer_matches": renderer_matches_template(model_name),
        "sl_metrics": supervised(url, model_name, Path(work) / "sl-loop"),
        "sl_checkpoints": [
            json.loads(line)
            for line in (Path(work) / "sl-loop" / "checkpoints.jsonl").read_text().splitlines()
        ],
        "rl_rewards": rl(url, model_name),
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
