"""Preference optimization (DPO) jobs on the tiny model, over HTTP and the library client."""

from __future__ import annotations

import math
import uuid
from typing import Any

from tests.apis.test_post_training import FACTS, dataset, request, wait
from tests.support import HTTP_ONLY, TINY, Driver, Result, with_changes

PAIRS = [
    {
        "prompt": f"Question {i}: what is a blorp?",
        "chosen": "A blorp is a small blue fish.",
        "rejected": "I do not know what that is.",
    }
    for i in range(12)
] + [
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Name a colour, please ({i})."},
        ],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": "Green, or perhaps red.",
    }
    for i in range(4)
]


def dpo_request(dataset_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "finetuned_model": TINY,
        "algorithm_config": {"beta": 0.1, "loss_type": "sigmoid"},
        "training_config": {
            "n_epochs": 2,
            "data_config": {"dataset_id": dataset_id, "batch_size": 4, "validation_split": 0.25},
            "optimizer_config": {"lr": 5e-3},
            "save_every": 2,
        },
        "finetuning_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    return with_changes(body, changes)


def start(api: Driver, body: dict[str, Any]) -> Result:
    return api.call("post_training", "preference_optimize", body=body)


def test_a_lora_dpo_job_learns_the_preference_and_is_served(api: Driver) -> None:
    job_uuid = f"dpo-{uuid.uuid4().hex[:8]}"
    created = start(api, dpo_request(dataset(api, PAIRS, "preference"), job_uuid=job_uuid))
    assert created.status == 200, created.body
    status = wait(api, job_uuid)
    assert status["status"] == "completed", status
    assert status["method"] == "dpo" and status["algorithm"] == "LoRA"
    assert status["model"] == TINY and status["fine_tuned_model"] == f"ft/{job_uuid}"
    assert [c["step"] for c in status["checkpoints"]] == [2, 4, 6]
    assert status["checkpoints"][-1]["training_metrics"]["perplexity"] is None

    metrics = api.call("post_training", "get_job_metrics", job_uuid).body["data"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    # the reference is the starting model: before the first update the policy equals it
    first = metrics[0]
    assert abs(first["loss"] - math.log(2)) < 1e-4
    assert abs(first["reward_margin"]) < 1e-4 and abs(first["rewards_chosen"]) < 1e-4
    last = metrics[-1]
    assert last["reward_margin"] > 0.1 and last["reward_accuracy"] == 1.0
    assert last["loss"] < first["loss"]
    held_out = [m for m in metrics if m.get("validation_reward_margin") is not None]
    assert [m["step"] for m in held_out] == [3, 6]
    assert held_out[-1]["validation_reward_margin"] > 0
    assert held_out[-1]["validation_reward_accuracy"] >= 0.75

    logs = api.call("post_training", "get_job_logs", job_uuid).body["lines"]
    assert any("reference log-probs of 16 pairs" in line for line in logs), logs[-20:]
    model = api.call("models", "get_model", f"ft/{job_uuid}").body
    assert model["kind"] == "adapter" and model["base_model"] == TINY
    answer = api.call(
        "inference",
        "completion",
        body={"model": f"ft/{job_uuid}", "prompt": "Question 1: what is a blorp?", "max_tokens": 4},
    )
    assert answer.status == 200


@HTTP_ONLY  # the library runs preference_optimize in test_a_lora_dpo_job_learns_...
def test_sft_then_dpo_and_full_dpo(api: Driver) -> None:
    sft = api.call(
        "post_training",
        "supervised_fine_tune",
        body=request(dataset(api, FACTS), **{"training_config.n_epochs": 1}),
    ).body["job_uuid"]
    assert wait(api, sft)["status"] == "completed"
    preference = dataset(api, PAIRS, "preference")
    on_sft = start(
        api,
        dpo_request(
            preference, finetuned_model=f"ft/{sft}", **{"algorithm_config.loss_type": "ipo"}
        ),
    ).body["job_uuid"]
    full = start(
        api,
        dpo_request(
            preference,
            finetuning_config={"type": "full"},
            **{"algorithm_config.loss_type": "hinge", "training_config.n_epochs": 1},
        ),
    ).body["job_uuid"]
    for job_uuid, algorithm in ((on_sft, "LoRA"), (full, "full")):
        status = wait(api, job_uuid)
        assert status["status"] == "completed", status
        assert status["algorithm"] == algorithm
        metrics = api.call("post_training", "get_job_metrics", job_uuid).body["data"]
        assert abs(metrics[0]["reward_margin"]) < 1e-4  # the reference is where the job starts
        assert metrics[-1]["reward_margin"] > metrics[0]["reward_margin"]
    # a DPO adapter trained on an SFT adapter serves on the same base model
    assert api.call("models", "get_model", f"ft/{on_sft}").body["base_model"] == TINY
    assert api.call("models", "get_model", f"ft/{full}").body["kind"] != "adapter"


def test_bad_dpo_requests_name_the_field(api: Driver) -> None:
    pairs = dataset(api, PAIRS, "preference")
    instruct = dataset(api, FACTS)
    cases: list[tuple[dict[str, Any], int, str]] = [
        (dpo_request(pairs, finetuned_model="no/such-model"), 404, "finetuned_model"),
        (dpo_request(instruct), 400, "training_config.data_config.dataset_id"),
        (
            dpo_request(pairs, **{"training_config.data_config.packed": True}),
            400,
            "training_config.data_config.packed",
        ),
        (
            dpo_request(pairs, **{"training_config.data_config.data_format": "dialog"}),
            400,
            "training_config.data_config.data_format",
        ),
        (
            dpo_request(pairs, **{"finetuning_config.lora_attn_modules": ["nope"]}),
            400,
            "finetuning_config.lora_attn_modules",
        ),
        (dpo_request(pairs, **{"algorithm_config.beta": 0}), 422, "algorithm_config.beta"),
        (
            dpo_request(pairs, **{"algorithm_config.loss_type": "kto"}),
            422,
            "algorithm_config.loss_type",
        ),
        (
            dpo_request(pairs, hyperparam_search_config={"beta": [1]}),
            400,
            "hyperparam_search_config",
        ),
    ]
    before = len(api.call("post_training", "list_jobs").body["data"])
    for body, status, param in cases:
        refused = start(api, body)
        assert refused.status == status, (param, refused.body)
        assert refused.error["param"] == param, (param, refused.error)
    assert len(api.call("post_training", "list_jobs").body["data"]) == before
