"""The official tinker SDK (0.38.0, in its own environment) trains and samples through
llama-post's training sessions (`tinker_training_flow.py`): its numbers are checked here against
transformers' own, and another owner's key against the owner's session."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.compat.envs import client_python, run_flow
from tests.support import TINY, Server, create_key, distribution


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    """The flow's report, and what another owner's key got from the owner's session."""
    python = client_python("tinker-0.38")
    home = tmp_path_factory.mktemp("tinker-training")
    server = Server(distribution(home, tiny_model) | {"auth": {"enabled": True}}, home)
    alice, bob = create_key(server.config, "alice"), create_key(server.config, "bob")
    server.start(timeout=60)
    try:
        seen: dict[str, Any] = json.loads(
            run_flow(python, "tinker_training_flow.py", server.url, alice, bob, TINY, timeout=400)
        )
        model = seen["model_id"]
        session = model.split(":", 1)[0]
        stolen = home / "training-sessions" / "sessions" / session / "0" / "sampler" / "s1"
        assert (stolen / "adapter_model.safetensors").is_file()
        seen["sampler_folder"] = str(stolen)
        with httpx.Client(base_url=server.url, headers={"X-API-Key": alice}, timeout=60) as http:
            # the owner registers its sampler weights as a model of its own, and samples it
            made = http.post(
                "/v1/models",
                json={
                    "model_id": "ft/alice-s1",
                    "source": {"type": "adapter", "path": str(stolen), "base_model": TINY},
                },
            )
            said = http.post(
                "/v1/completions",
                json={"model": "ft/alice-s1", "prompt": "Hello", "max_tokens": 3},
            )
            seen["registered"] = [made.status_code, said.status_code]
        with httpx.Client(base_url=server.url, headers={"X-API-Key": bob}, timeout=60) as http:
            seen["bob"] = [
                http.post("/api/v1/get_info", json={"model_id": model}).status_code,
                http.post("/api/v1/optim_step", json={"model_id": model, "seq_id": 99}).status_code,
                http.post(
                    "/api/v1/retrieve_future", json={"request_id": f"{session}:req:0"}
                ).status_code,
                http.get(f"/v1/training-sessions/{session}").status_code,
                http.post(f"/v1/training-models/{model}/optim-step", json={}).status_code,
                http.post(
                    "/api/v1/create_model",
                    json={"session_id": session, "model_seq_id": 5, "base_model": TINY},
                ).status_code,
                http.get(f"/v1/training-models/{model}/states/sampler/s1").status_code,
                http.get(f"/v1/training-models/{model}/states").status_code,
                http.get("/v1/models/ft/alice-s1").status_code,
                # nor the folder of the owner's sampler weights, named by its path
                http.post(
                    "/v1/models",
                    json={
                        "model_id": "bob/stolen",
                        "source": {"type": "adapter", "path": str(stolen), "base_model": TINY},
                    },
                ).status_code,
            ]
    finally:
        server.stop()
    return seen


def _reference(model_dir: Path, rows: list[list[int]], weights: list[list[float]]) -> Any:
    """Each row's per-token log-probabilities of its targets, and the weighted cross-entropy
    summed over all rows, computed with transformers in this process (float32)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    logprobs, total = [], 0.0
    with torch.no_grad():
        for tokens, w in zip(rows, weights, strict=True):
            logits = model(torch.tensor([tokens[:-1]])).logits[0].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]
            logprobs.append(lp.tolist())
            total += float(-(lp * torch.tensor(w[1:])).sum())
    return logprobs, total


def test_the_first_forward_is_transformers_cross_entropy(
    trained: dict[str, Any], tiny_model: Path
) -> None:
    assert trained["tinker"] == "0.38.0"
    assert trained["tokenizer_id"] == str(tiny_model) and trained["lora_rank"] == 4
    logprobs, loss = _reference(tiny_model, trained["rows"], trained["weights"])
    assert abs(trained["first_loss"] - loss) < 1e-4, (trained["first_loss"], loss)
    for mine, theirs in zip(trained["first_logprobs"], logprobs, strict=True):
        assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-4


def test_steps_lower_the_loss_and_a_saved_state_goes_on_alike(trained: dict[str, Any]) -> None:
    losses = trained["losses"]
    assert losses[2] < losses[1] < losses[0], losses
    # the next step's loss and the loss after it, from the client that never stopped and from
    # one made from the state saved with its optimizer: the same numbers
    assert trained["going_on"] == trained["after"], (trained["going_on"], trained["after"])
    assert trained["going_on"][1] < losses[0]
    # then a step over one batch, and one over its halves in two forward_backward calls
    # (the gradients accumulated): the same step, up to the float sums' order
    full, halves = trained["accumulated"]
    assert abs(full - halves) <= 1e-5 * abs(full), trained["accumulated"]


def test_rl_losses_and_a_refused_one(trained: dict[str, Any]) -> None:
    targets = sum(len(r) - 1 for r in trained["rows"])
    # on the sampler's own log-probabilities the ratio is 1 (and within ppo's clip): -sum(A)
    for name in ("importance_sampling", "ppo"):
        assert abs(trained["rl"][name] + targets) < 1e-3, trained["rl"]
    assert "'dro' is not served" in trained["unknown_loss"], trained["unknown_loss"]


def test_sampling_from_saved_sampler_weights(trained: dict[str, Any]) -> None:
    samples = trained["samples"]
    assert len(samples) == 2
    for sample in samples:
        assert 1 <= len(sample["tokens"]) <= 6 and sample["stop"] in ("stop", "length")
        assert len(sample["logprobs"]) == len(sample["tokens"])
        assert all(lp <= 0.0 for lp in sample["logprobs"])
    assert len(trained["quick"]) == 4  # stop=[]: no end of sequence stops it


def test_prompt_and_top_logprobs_are_transformers(
    trained: dict[str, Any], tiny_model: Path
) -> None:
    """compute_logprobs and the top-k logprobs of a sample, against the sampler weights (s1)
    run by transformers and peft in this process."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with warnings.catch_warnings():  # peft's note on the tied output head it adapts
        warnings.simplefilter("ignore", UserWarning)
        model = PeftModel.from_pretrained(base, trained["sampler_folder"]).eval()

    def logps(tokens: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([tokens])).logits[0].float(), -1)

    scored_row = trained["rows"][1]
    scored = logps(scored_row)
    assert trained["scored"][0] is None and len(trained["scored"]) == len(scored_row)
    expected = [float(scored[i, t]) for i, t in enumerate(scored_row[1:])]
    assert max(abs(a - b) for a, b in zip(trained["scored"][1:], expected, strict=True)) < 1e-4

    topped = trained["topped"]
    prompt = trained["rows"][0][:5]
    full = logps(prompt + topped["tokens"])
    assert topped["prompt"][0] is None and topped["prompt_topk"][0] is None
    for i in range(1, len(prompt)):
        assert abs(topped["prompt"][i] - float(full[i - 1, prompt[i]])) < 1e-4
        values, ids = full[i - 1].topk(3)
        assert [t for t, _ in topped["prompt_topk"][i]] == ids.tolist()
        given = [lp for _, lp in topped["prompt_topk"][i]]
        assert max(abs(a - b) for a, b in zip(given, values.tolist(), strict=True)) < 1e-4
    for j, token in enumerate(topped["tokens"]):  # greedy: each is the likeliest
        at = full[len(prompt) - 1 + j]
        values, ids = at.topk(3)
        assert token == ids[0] and abs(topped["logprobs"][j] - float(at[token])) < 1e-4
        assert [t for t, _ in topped["topk"][j]] == ids.tolist()


def test_another_owner_is_refused_the_session(trained: dict[str, Any]) -> None:
    for refusal in trained["refused"].values():
        assert "404" in refusal or "NotFound" in refusal, trained["refused"]
    assert trained["bob"] == [404] * 10, trained["bob"]
    assert trained["theirs_listed"] == [], trained["theirs_listed"]


def test_saved_states_are_checkpoints_and_models(trained: dict[str, Any]) -> None:
    run = trained["model_id"]
    assert trained["listed"][:2] == [trained["state"], trained["sampler_path"]], trained["listed"]
    assert trained["listed"][2].startswith(f"tinker://{run}/sampler_weights/seq-")
    assert trained["state"] == f"tinker://{run}/weights/mid"
    # across the caller's runs, newest first: the states of the model made from "mid" too
    assert set(trained["listed"]) <= set(trained["mine"]), trained["mine"]
    assert trained["registered"] == [200, 200], trained["registered"]
