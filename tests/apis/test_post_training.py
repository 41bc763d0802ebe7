"""Supervised fine-tuning jobs on the tiny model, over HTTP and through the library client."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from providers.utils.precision import choose
from tests.support import HTTP_ONLY, TINY, Driver, Result, with_changes

FACTS = [
    {"prompt": f"Question {i}: what is a blorp?", "completion": "A blorp is a small blue fish."}
    for i in range(16)
]


def dataset(api: Driver, rows: list[dict[str, Any]] = FACTS, purpose: str = "instruct") -> str:
    dataset_id = f"sft-{uuid.uuid4().hex[:8]}"
    made = api.call(
        "datasets",
        "register_dataset",
        body={
            "dataset_id": dataset_id,
            "purpose": purpose,
            "source": {"type": "rows", "rows": rows},
        },
    )
    assert made.status == 200, made.body
    return dataset_id


def request(dataset_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": TINY,
        "training_config": {
            "n_epochs": 2,
            "data_config": {"dataset_id": dataset_id, "batch_size": 4, "validation_split": 0.25},
            "optimizer_config": {"lr": 5e-3, "num_warmup_steps": 1, "lr_scheduler": "cosine"},
            "save_every": 2,
        },
        "algorithm_config": {
            "type": "LoRA",
            "rank": 4,
            "alpha": 8,
            "lora_attn_modules": ["q_proj", "v_proj"],
        },
    }
    return with_changes(body, changes)


def wait(api: Driver, job_uuid: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = api.call("post_training", "get_job_status", job_uuid).body
        if status["status"] in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_uuid} did not finish")


def start(api: Driver, body: dict[str, Any]) -> Result:
    return api.call("post_training", "supervised_fine_tune", body=body)


@dataclass
class LoraJob:
    job_uuid: str
    created: Result
    listed: list[str]  # the jobs listed right after it was created
    events: list[Any]  # its events stream, followed from its creation to its end


@pytest.fixture(scope="module")
def lora_job(api: Driver) -> LoraJob:
    """One LoRA job a driver (2 epochs of 3 steps), followed through its events stream as it
    runs, for the tests that read what it did."""
    job_uuid = f"job-{uuid.uuid4().hex[:8]}"
    created = start(api, request(dataset(api), job_uuid=job_uuid))
    listed = [j["job_uuid"] for j in api.call("post_training", "list_jobs").body["data"]]
    events = api.call("post_training", "stream_job_events", job_uuid).body
    return LoraJob(job_uuid, created, listed, events)


def test_a_lora_job_runs_to_a_served_model(api: Driver, lora_job: LoraJob) -> None:
    job_uuid = lora_job.job_uuid
    assert lora_job.created.body == {"job_uuid": job_uuid}
    assert job_uuid in lora_job.listed

    status = wait(api, job_uuid)
    assert status["status"] == "completed", status
    assert status["algorithm"] == "LoRA" and status["model"] == TINY
    assert status["scheduled_at"] <= status["started_at"] <= status["completed_at"]
    assert status["resources_allocated"]["device"] == "cpu"
    # dtype auto (the default): the type this machine computes fastest, said in the log too
    assert status["request"]["training_config"]["dtype"] == "auto"
    chosen = choose("auto", "cpu")
    assert status["resources_allocated"]["dtype"] == chosen.precision
    progress = status["progress"]
    assert (progress["step"], progress["total_steps"], progress["epoch"]) == (6, 6, 1)
    assert progress["peak_memory_bytes"] > 100 * 2**20  # the worker's own peak RSS
    steps = [c["step"] for c in status["checkpoints"]]
    assert steps == [2, 4, 6]
    final = status["checkpoints"][-1]
    assert final["model_id"] == status["fine_tuned_model"] == f"ft/{job_uuid}"
    assert final["training_metrics"]["validation_loss"] is not None

    metrics = api.call("post_training", "get_job_metrics", job_uuid).body["data"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(m["loss"] > 0 and m["lr"] > 0 and m["tokens_per_second"] > 0 for m in metrics)
    assert [m["validation_loss"] is not None for m in metrics] == [False, False, True] * 2
    assert metrics[-1]["loss"] < metrics[0]["loss"]

    logs = api.call("post_training", "get_job_logs", job_uuid).body["lines"]
    assert any("saved checkpoint step-000006" in line for line in logs)
    assert any(f"computing in {chosen.precision} (" in line for line in logs)
    artifacts = api.call("post_training", "get_job_artifacts", job_uuid).body
    assert artifacts["checkpoints"] == status["checkpoints"]

    model = api.call("models", "get_model", f"ft/{job_uuid}").body
    assert model["kind"] == "adapter" and model["base_model"] == TINY
    _peft_loads_it(final["path"], api.call("models", "get_model", TINY).body["source"]["path"])
    answer = api.call(
        "inference",
        "completion",
        body={"model": f"ft/{job_uuid}", "prompt": FACTS[0]["prompt"], "max_tokens": 4},
    )
    assert answer.status == 200


def test_events_stream_to_the_end(lora_job: LoraJob) -> None:
    events = lora_job.events
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "status" and events[-1]["status"]["status"] == "completed"
    assert "metrics" in kinds and "log" in kinds
    assert [e["metrics"]["step"] for e in events if e["type"] == "metrics"] == [1, 2, 3, 4, 5, 6]


@HTTP_ONLY  # the library runs supervised_fine_tune in test_a_lora_job_runs_to_a_served_model
def test_full_fine_tuning(api: Driver) -> None:
    body = request(
        dataset(api),
        algorithm_config={"type": "full"},
        **{"training_config.n_epochs": 1, "training_config.save_every": None},
    )
    job_uuid = start(api, body).body["job_uuid"]
    status = wait(api, job_uuid)
    assert status["status"] == "completed", status
    model = api.call("models", "get_model", status["fine_tuned_model"]).body
    assert model["kind"] == "base"
    assert (
        api.call(
            "inference",
            "completion",
            body={"model": status["fine_tuned_model"], "prompt": "hi", "max_tokens": 2},
        ).status
        == 200
    )


def test_preflight(api: Driver) -> None:
    ds = dataset(api)
    report = api.call("post_training", "preflight", body=request(ds)).body
    assert report["rows"] == 12 and report["validation_rows"] == 4
    assert report["steps_per_epoch"] == 3 and report["total_steps"] == 6
    assert report["truncated_rows"] == 0 and report["errors"] == []
    assert "assistant\n[[A blorp is a small blue fish.<|im_end|>\n]]" in report["example"]
    assert "user\nQuestion" in report["example"].split("[[")[0]

    everything = api.call(
        "post_training",
        "preflight",
        body=request(ds, **{"training_config.data_config.train_on_input": True}),
    ).body
    assert everything["trained_tokens"] > report["trained_tokens"]

    short = api.call(
        "post_training",
        "preflight",
        body=request(ds, **{"training_config.data_config.max_seq_len": 20}),
    ).body
    assert short["truncated_rows"] == 12
    assert short["errors"][0]["message"].startswith("no trained tokens within max_seq_len 20")
    refused = start(api, request(ds, **{"training_config.data_config.max_seq_len": 20}))
    assert refused.status == 400 and "cannot be used" in refused.error["message"]


@HTTP_ONLY  # what llama-stack-client sends, over HTTP
def test_what_llama_stack_leaves_optional_has_a_default(api: Driver) -> None:
    """The fields Llama Stack's API declares optional may be left out, or sent as null (as
    llama-stack-client 0.7 does): no optimizer or algorithm config, the dataset's purpose as
    its data format."""
    dialog = dataset(
        api,
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        ]
        * 4,
        purpose="dialog",
    )
    body = {
        "model": TINY,
        "algorithm_config": None,
        "training_config": {
            "n_epochs": 1,
            "data_config": {
                "dataset_id": dialog,
                "batch_size": 2,
                "packed": None,
                "train_on_input": None,
                "data_format": None,
            },
            "optimizer_config": None,
            "efficiency_config": None,
            "dtype": None,
            "max_validation_steps": None,
        },
        "hyperparam_search_config": {},
        "logger_config": {},
    }
    made = start(api, body)
    assert made.status == 200, made.body
    status = wait(api, made.body["job_uuid"])
    assert status["status"] == "completed" and status["algorithm"] == "LoRA", status
    metrics = api.call("post_training", "get_job_metrics", made.body["job_uuid"]).body["data"]
    assert [m["lr"] for m in metrics] == [2e-4, 2e-4]


def test_bad_requests_fail_before_any_worker(api: Driver) -> None:
    ds = dataset(api)
    cases: list[tuple[dict[str, Any], int, str]] = [
        (request("no-such-dataset"), 404, "training_config.data_config.dataset_id"),
        (
            request(
                dataset(
                    api,
                    [
                        {
                            "messages": [
                                {"role": "user", "content": "a"},
                                {"role": "assistant", "content": "b"},
                            ]
                        }
                    ],
                    purpose="dialog",
                ),
                **{"training_config.data_config.data_format": "instruct"},
            ),
            400,
            "training_config.data_config.dataset_id",
        ),
        (request(ds, model="no/such-model"), 404, "model"),
        (request(ds, model=None), 400, "model"),
        (request(ds, **{"training_config.data_config": None}), 400, "training_config.data_config"),
        (
            request(ds, **{"algorithm_config.lora_attn_modules": ["query_key_value"]}),
            400,
            "algorithm_config.lora_attn_modules",
        ),
        (
            request(ds, **{"algorithm_config.quantize_base": True}),
            400,
            "algorithm_config.quantize_base",
        ),
        (
            request(ds, **{"training_config.efficiency_config": {"fsdp_cpu_offload": True}}),
            400,
            "training_config.efficiency_config.fsdp_cpu_offload",
        ),
        (
            request(
                ds,
                **{
                    "training_config.efficiency_config": {
                        "enable_activation_checkpointing": False,
                        "activation_checkpointing_every_n_layers": 3,
                    }
                },
            ),
            400,
            "training_config.efficiency_config.activation_checkpointing_every_n_layers",
        ),
        (request(ds, hyperparam_search_config={"lr": [1, 2]}), 400, "hyperparam_search_config"),
        (request(ds, checkpoint_dir="../../etc"), 400, "checkpoint_dir"),
        (
            request(ds, **{"training_config.data_config.batch_size": 0}),
            422,
            "training_config.data_config.batch_size",
        ),
        (
            request(ds, **{"training_config.optimizer_config.lr": 5}),
            422,
            "training_config.optimizer_config.lr",
        ),
        (request(ds, **{"training_config.n_epochs": 0}), 422, "training_config.n_epochs"),
        (request(ds, **{"training_config.bogus": 1}), 422, "training_config.bogus"),
        (request(ds, job_uuid="../escape"), 422, "job_uuid"),
    ]
    before = len(api.call("post_training", "list_jobs").body["data"])
    for body, status, param in cases:
        refused = start(api, body)
        assert refused.status == status, (param, refused.body)
        assert refused.error["param"] == param, (param, refused.error)
    assert len(api.call("post_training", "list_jobs").body["data"]) == before
    assert api.call("post_training", "get_job_status", "nope").status == 404
    assert api.call("post_training", "cancel_job", "nope").status == 404


def test_cancel(api: Driver) -> None:
    rows = FACTS * 8
    body = request(
        dataset(api, rows),
        **{"training_config.n_epochs": 50, "training_config.data_config.batch_size": 1},
    )
    job_uuid = start(api, body).body["job_uuid"]
    deadline = time.monotonic() + 60
    while api.call("post_training", "get_job_status", job_uuid).body["progress"]["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    started = time.monotonic()
    cancelled = api.call("post_training", "cancel_job", job_uuid).body
    assert time.monotonic() - started < 10
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] is not None
    again = api.call("post_training", "cancel_job", job_uuid)
    assert again.status == 409


def _peft_loads_it(checkpoint: str, base: str) -> None:
    """A checkpoint is a plain PEFT folder: peft loads it on its own."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoint)
    assert any("lora_A" in name for name, _ in model.named_parameters())


@HTTP_ONLY  # a race in the jobs' scheduler; the library cancels through test_cancel
def test_a_job_cancelled_as_its_worker_starts_stays_cancelled(api: Driver) -> None:
    """Cancel lands between the scheduler taking the job and its worker being recorded."""
    body = request(dataset(api, FACTS * 4), **{"training_config.n_epochs": 50})
    for _ in range(3):
        job_uuid = start(api, body).body["job_uuid"]
        assert api.call("post_training", "cancel_job", job_uuid).body["status"] == "cancelled"
        time.sleep(1.0)  # long enough for a worker started anyway to have been recorded
        status = api.call("post_training", "get_job_status", job_uuid).body
        assert status["status"] == "cancelled", status
