"""bf16 against fp32 on the tiny model: training's per-step losses, what stays fp32 in a bf16
job, and inference's greedy outputs, with the tolerances stated here.

- Training: over 20 optimizer steps, every bf16 loss is within 2% (relative) of the fp32 loss
  of the same step, for LoRA (bf16 base, fp32 adapter) and full fine-tuning (fp32 master
  weights under bf16 autocast).
- Inference: a greedy continuation in bf16 follows fp32's token for token until the two
  disagree, and they may disagree only where fp32's two best tokens were within 0.05 nats
  (bf16 rounding can flip a near tie, nothing more); until then each chosen token's logprob is
  within 0.05 nats of fp32's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from llama_post.library_client import LlamaPostClient
from providers.utils.precision import choose
from tests.support import TINY, Server, distribution, wait_for_job
from tests.tiny import build_tiny_adapter

LOSS_TOLERANCE = 0.02  # relative, per step
LOGPROB_TOLERANCE = 0.05  # nats

ROWS = [
    {"prompt": f"Question {i}: what is a blorp?", "completion": f"A blorp is fish number {i}."}
    for i in range(16)
]


def _train(server: Server, job_uuid: str, dtype: str, algorithm: dict[str, Any]) -> None:
    body = {
        "job_uuid": job_uuid,
        "model": TINY,
        "training_config": {
            "n_epochs": 5,  # 4 steps an epoch: 20 steps
            "data_config": {"dataset_id": "precision-rows", "batch_size": 4, "shuffle": True},
            "optimizer_config": {"lr": 1e-2 if algorithm["type"] == "LoRA" else 1e-3},
            "dtype": dtype,
            "seed": 3,
        },
        "algorithm_config": algorithm,
    }
    made = httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)
    assert made.status_code == 200, made.text


def _finished(server: Server, job_uuid: str) -> dict[str, Any]:
    status = wait_for_job(server.url, job_uuid)
    assert status["status"] == "completed", status
    return status


def test_bf16_training_tracks_fp32_and_keeps_what_it_trains_in_fp32(server: Server) -> None:
    made = httpx.post(
        f"{server.url}/v1/datasets",
        json={
            "dataset_id": "precision-rows",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    lora = {"type": "LoRA", "rank": 4, "alpha": 8, "lora_attn_modules": ["q_proj", "v_proj"]}
    for name, algorithm in (("lora", lora), ("full", {"type": "full"})):
        for dtype in ("fp32", "bf16"):
            _train(server, f"precision-{name}-{dtype}", dtype, algorithm)
        losses = {}
        for dtype in ("fp32", "bf16"):
            job = f"precision-{name}-{dtype}"
            status = _finished(server, job)
            assert status["resources_allocated"]["dtype"] == dtype
            assert status["request"]["training_config"]["dtype"] == dtype
            metrics = httpx.get(f"{server.url}/v1/post-training/jobs/{job}/metrics").json()
            losses[dtype] = [m["loss"] for m in metrics["data"]]
            logs = httpx.get(f"{server.url}/v1/post-training/jobs/{job}/logs").json()["lines"]
            assert any(f"computing in {dtype} (asked for)" in line for line in logs)
            final = Path(status["checkpoints"][-1]["path"])
            weights = "adapter_model" if name == "lora" else "model"
            saved = load_file(str(final / f"{weights}.safetensors"))
            assert {t.dtype for t in saved.values()} == {torch.float32}, (name, dtype)
            state = torch.load(final / "state.pt", weights_only=False)["optimizer"]["state"]
            assert {s["exp_avg"].dtype for s in state.values()} == {torch.float32}
        assert len(losses["fp32"]) == len(losses["bf16"]) == 20
        assert losses["fp32"] != losses["bf16"]  # really computed in another type
        for step, (ref, got) in enumerate(zip(losses["fp32"], losses["bf16"], strict=True), 1):
            assert abs(got - ref) <= LOSS_TOLERANCE * ref, (name, step, ref, got)


@pytest.fixture(scope="module")
def two_types(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("precision")
    config = distribution(home, tiny_model, inference={"dtype": "float32"})
    (fp32,) = config["providers"]["inference"]
    config["models"][0]["provider_id"] = fp32["provider_id"]
    for name, dtype in (("bf16", "bfloat16"), ("auto", "auto")):
        provider = {**fp32, "provider_id": name, "config": {**fp32["config"], "dtype": dtype}}
        config["providers"]["inference"].append(provider)
        config["models"].append(
            {
                "model_id": f"tiny/{name}",
                "provider_id": name,
                "source": config["models"][0]["source"],
            }
        )
    with LlamaPostClient(config) as client:
        yield client


def _greedy(client: Any, model: str, prompt: str) -> list[tuple[str, float, float]]:
    """(token, its logprob, the gap to the runner-up) for 16 greedy tokens."""
    answer = client.inference.completion(
        model=model, prompt=prompt, max_tokens=16, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    out = []
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        best = sorted(top.values(), reverse=True)
        out.append((token, logprob, best[0] - best[1]))
    return out


def test_bf16_greedy_decoding_follows_fp32_until_a_near_tie(two_types: Any) -> None:
    client = two_types
    assert client.models.get_model(TINY).dtype == "fp32"
    assert client.models.get_model("tiny/bf16").dtype == "bf16"
    assert client.models.get_model("tiny/auto").dtype == choose("auto", "cpu").precision
    agreed = 0
    for prompt in ("The blorp", "Once upon a time", "Question 3: what is a blorp?"):
        ours, theirs = _greedy(client, "tiny/bf16", prompt), _greedy(client, TINY, prompt)
        for (token, logprob, _), (ref_token, ref_logprob, ref_gap) in zip(
            ours, theirs, strict=True
        ):
            if token != ref_token:
                assert ref_gap < LOGPROB_TOLERANCE, (prompt, token, ref_token, ref_gap)
                break
            assert abs(logprob - ref_logprob) < LOGPROB_TOLERANCE, (prompt, token)
            agreed += 1
    assert agreed >= 8, agreed  # the comparison compared something


def test_an_adapter_is_served_in_its_bases_type(
    two_types: Any, models_dir: Path, tiny_model: Path
) -> None:
    folder = build_tiny_adapter(models_dir / "precision-adapter", tiny_model, seed=7)
    client = two_types
    model = client.models.register_model(
        model_id="tiny/bf16-adapter",
        source={"type": "adapter", "path": str(folder), "base_model": "tiny/bf16"},
    )
    assert model.dtype == "bf16"
    (provider,) = (p.impl for p in client.stack.providers if p.provider_id == "bf16")
    engine = provider.bases["tiny/bf16"].engine
    lora = {p.dtype for n, p in engine.model.named_parameters() if "lora_" in n}
    assert lora == {torch.bfloat16}
    answer = client.inference.completion(
        model="tiny/bf16-adapter", prompt="The blorp", max_tokens=4
    )
    assert answer.usage.completion_tokens == 4
