"""Reinforcement fine-tuning (GRPO) jobs on the tiny model: a real job over the real server to
a served model, and the requests refused at creation, naming their field."""

from __future__ import annotations

import uuid
from typing import Any

from tests.apis.test_post_training import FACTS, dataset
from tests.support import TINY, Driver, HttpDriver, Result, Server, wait_for_job, with_changes

WORDS = ["zero", "one", "two", "three", "four", "five", "six"]
# the last three rows have no `answer`: the grader fails on their samples (scored 0, counted);
# two rows are held out, so at least one of them is trained on
PROMPTS = [{"prompt": f"Spell the number {n} in words.", "answer": w} for n, w in enumerate(WORDS)]
PROMPTS += [{"prompt": f"Spell the number {n} in words."} for n in (7, 8, 9)]

# rewards a long answer, one with a "k", and the answer: a random model earns the first two
# now and then
GRADER: dict[str, Any] = {
    "type": "multi",
    "name": "shape",
    "graders": {
        "long": {
            "type": "regex",
            "name": "long",
            "input": "{{sample.output_text}}",
            "pattern": ".{36}",
        },
        "has_k": {
            "type": "string_check",
            "name": "has_k",
            "input": "{{sample.output_text}}",
            "reference": "k",
            "operation": "ilike",
        },
        "echo": {
            "type": "string_check",
            "name": "echo",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "ilike",
        },
    },
    "calculate_output": "0.4 * long + 0.4 * has_k + 0.2 * echo",
}


def grpo_request(dataset_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": TINY,
        "algorithm_config": {
            "group_size": 4,
            "max_tokens": 6,
            "kl_coef": 0.05,
            "num_iterations": 2,
        },
        "grader": GRADER,
        "training_config": {
            "n_epochs": 1,
            "data_config": {"dataset_id": dataset_id, "batch_size": 2, "validation_split": 0.2},
            "optimizer_config": {"lr": 1e-2},
            "save_every": 2,
        },
        "finetuning_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    return with_changes(body, changes)


def start(api: Driver, body: dict[str, Any]) -> Result:
    return api.call("post_training", "reinforce", body=body)


def test_a_grpo_job_samples_grades_learns_and_is_served(
    http_driver: HttpDriver, server: Server
) -> None:
    job_uuid = f"grpo-{uuid.uuid4().hex[:8]}"
    created = start(
        http_driver, grpo_request(dataset(http_driver, PROMPTS, "prompt"), job_uuid=job_uuid)
    )
    assert created.status == 200, created.body
    status = wait_for_job(server, job_uuid)
    assert status["status"] == "completed", status
    assert status["method"] == "grpo" and status["fine_tuned_model"] == f"ft/{job_uuid}"
    assert [c["step"] for c in status["checkpoints"]] == [2, 4]  # 8 prompts, 2 a step
    assert status["request"]["grader"]["type"] == "multi"

    metrics = http_driver.call("post_training", "get_job_metrics", job_uuid).body["data"]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    base, *steps = metrics
    assert base["loss"] is None and 0.0 <= base["validation_reward"] <= 1.0  # before training
    for m in steps:
        assert 0.0 <= m["reward_mean"] <= 1.0 and m["reward_std"] >= 0.0
        assert set(m["rewards_by_grader"]) == {"long", "has_k", "echo"}
        assert 0.0 <= m["zero_variance_groups"] <= 1.0
        assert m["kl"] >= 0.0 and 0.0 <= m["clip_fraction"] <= 1.0
        assert 1.0 <= m["completion_length"] <= 6.0
        assert m["sampling_tokens_per_second"] > 0 and m["training_tokens_per_second"] > 0
    # the first step starts from the base (KL 0 on its first update); the policy drifts after
    assert 0.0 < steps[0]["kl"] < steps[-1]["kl"]
    assert any(m["reward_std"] > 0 for m in steps)  # some groups had a signal to learn from
    # each answer to a row without `answer` failed to grade, and was counted (4 per prompt)
    failed = [m["grader_errors"] for m in steps]
    assert sum(failed) >= 4 and all(n % 4 == 0 for n in failed), failed
    assert "validation_reward" in steps[-1]  # the held-out reward at the epoch's end

    logs = http_driver.call("post_training", "get_job_logs", job_uuid).body["lines"]
    assert sum("sample (reward" in line for line in logs) >= 4, logs[-20:]
    answer = http_driver.call(
        "inference",
        "chat_completion",
        body={
            "model": f"ft/{job_uuid}",
            "messages": [{"role": "user", "content": PROMPTS[3]["prompt"]}],
            "max_tokens": 4,
        },
    )
    assert answer.status == 200, answer.body
    assert answer.body["usage"]["completion_tokens"] >= 1


def test_a_grader_failing_on_the_whole_first_batch_stops_the_job(
    http_driver: HttpDriver, server: Server
) -> None:
    broken = {**GRADER["graders"]["echo"], "reference": "{{item.solution}}"}  # no such field
    body = grpo_request(dataset(http_driver, PROMPTS, "prompt"), grader=broken)
    job_uuid = start(http_driver, body).body["job_uuid"]
    status = wait_for_job(server, job_uuid)
    assert status["status"] == "failed", status
    assert "the grader failed on every answer of the first batch" in status["error"]
    assert "solution" in status["error"]  # the grader's own error
    assert status["attempts"] and len(status["attempts"]) == 1  # the job's fault: no retry


def test_bad_grpo_requests_name_the_field(api: Driver) -> None:
    prompts = dataset(api, PROMPTS, "prompt")
    instruct = dataset(api, FACTS)
    score_model = {
        "type": "score_model",
        "name": "judge",
        "model": TINY,
        "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
    }
    cases: list[tuple[dict[str, Any], int, str]] = [
        (grpo_request(prompts, grader=None), 400, "grader"),
        (grpo_request(prompts, model="no/such-model"), 404, "model"),
        (grpo_request(instruct), 400, "training_config.data_config.dataset_id"),
        (
            grpo_request(prompts, **{"algorithm_config.group_size": 1}),
            422,
            "algorithm_config.group_size",
        ),
        (
            grpo_request(prompts, **{"algorithm_config.temperature": 0}),
            422,
            "algorithm_config.temperature",
        ),
        (
            grpo_request(prompts, **{"algorithm_config.loss_aggregation": "batch"}),
            422,
            "algorithm_config.loss_aggregation",
        ),
        (
            grpo_request(prompts, finetuning_config={"type": "full"}),
            400,
            "algorithm_config.kl_coef",
        ),
        (  # a judge the caller may use, served here (see tests/server/test_graders.py)
            grpo_request(prompts, grader=score_model | {"model": "no/such-model"}),
            400,
            "grader.model",
        ),
        (
            grpo_request(prompts, **{"training_config.data_config.packed": True}),
            400,
            "training_config.data_config.packed",
        ),
        (
            grpo_request(prompts, **{"training_config.data_config.data_format": "instruct"}),
            400,
            "training_config.data_config.data_format",
        ),
        (  # no room left for an answer after the prompt
            grpo_request(
                prompts,
                **{"training_config.data_config.max_seq_len": 16, "algorithm_config.max_tokens": 8},
            ),
            400,
            "training_config.data_config.dataset_id",
        ),
    ]
    if api.name == "library":  # in process, no server for the job's worker to call
        cases.append((grpo_request(prompts, grader=score_model), 400, "grader"))
    before = len(api.call("post_training", "list_jobs").body["data"])
    for body, status, param in cases:
        refused = start(api, body)
        assert refused.status == status, (param, refused.body)
        assert refused.error["param"] == param, (param, refused.error)
    assert len(api.call("post_training", "list_jobs").body["data"]) == before


def test_torchtune_refuses_reinforcement_by_name() -> None:
    from llama_post.apis.post_training import ReinforceRequest
    from providers.inline.post_training.torchtune.post_training import TorchtunePostTraining

    request = ReinforceRequest.model_validate(grpo_request("prompts"))
    refused = TorchtunePostTraining.refusals(None, request)  # type: ignore[arg-type]
    assert [field for field, _ in refused] == ["algorithm_config"]
    assert "inline::peft" in refused[0][1]
