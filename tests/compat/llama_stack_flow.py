"""Llama Stack's post-training workflow, written as a llama-stack-client user writes it.

It imports only the client, so it runs in a virtual environment of each release we support:
0.2.x (ids in the query or body, `/v1/openai/v1` chat) and 0.7.0 (`/v1alpha` post-training,
`/v1beta` datasets, ids in the path).

    python tests/compat/llama_stack_flow.py http://127.0.0.1:PORT tiny/llama

It prints one JSON line of what it saw; every check is an `assert`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import llama_stack_client
from llama_stack_client import LlamaStackClient

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}: what is a blorp?"},
            {"role": "assistant", "content": "A blorp is a small blue fish."},
        ]
    }
    for i in range(8)
]
# Preference pairs in both prompt shapes: `data_format: dialog` reads `messages`, `instruct` reads
# `prompt` (the client's types require one of them on every job).
PAIRS = {
    "dialog": [
        {
            "messages": [{"role": "user", "content": f"Question {i}: what is a blorp?"}],
            "chosen": "A blorp is a small blue fish.",
            "rejected": "I do not know.",
        }
        for i in range(8)
    ],
    "instruct": [
        {
            "prompt": f"Question {i}: what is a blorp?",
            "chosen": "A blorp is a small blue fish.",
            "rejected": "I do not know.",
        }
        for i in range(8)
    ],
}


def training_config(dataset_id: str, n_epochs: int) -> dict[str, Any]:
    return {
        "n_epochs": n_epochs,
        "max_steps_per_epoch": 100,
        "gradient_accumulation_steps": 1,
        "data_config": {
            "dataset_id": dataset_id,
            "batch_size": 4,
            "shuffle": True,
            "data_format": "dialog",
        },
        "optimizer_config": {
            "optimizer_type": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "num_warmup_steps": 0,
        },
    }


def minimal_training(dataset_id: str, data_format: str, n_epochs: int, new: bool) -> dict[str, Any]:
    """Only what the client's types require: 0.7 needs `n_epochs` and a data config; 0.2 also
    `max_steps_per_epoch` and `gradient_accumulation_steps`. No optimizer config."""
    config: dict[str, Any] = {
        "n_epochs": n_epochs,
        "data_config": {
            "dataset_id": dataset_id,
            "batch_size": 4,
            "shuffle": True,
            "data_format": data_format,
        },
    }
    if not new:
        config |= {"max_steps_per_epoch": 100, "gradient_accumulation_steps": 1}
    return config


def main(base_url: str, model: str) -> dict[str, Any]:
    version = llama_stack_client.__version__
    new = tuple(int(p) for p in version.split(".")[:2]) >= (0, 7)
    client = LlamaStackClient(base_url=base_url, max_retries=0)
    datasets = client.beta.datasets if new else client.datasets
    post_training = client.alpha.post_training if new else client.post_training

    # Datasets: register from rows, append rows, page through them.
    dataset_id = f"lsc-{uuid.uuid4().hex[:8]}"
    registered = datasets.register(
        purpose="post-training/messages",
        source={"type": "rows", "rows": ROWS[:6]},
        dataset_id=dataset_id,
    )
    assert registered.identifier == dataset_id
    if new:
        datasets.appendrows(dataset_id, body_dataset_id=dataset_id, rows=ROWS[6:])
    else:
        datasets.appendrows(dataset_id, rows=ROWS[6:])
    page = datasets.iterrows(dataset_id, start_index=6, limit=10)
    assert [r["messages"][0]["content"] for r in page.data] == [
        "Question 6: what is a blorp?",
        "Question 7: what is a blorp?",
    ]
    assert not page.has_more
    assert dataset_id in [d.identifier for d in datasets.list()]

    # A LoRA job, its config without `type`, as the client's examples send it.
    job_uuid = f"lsc-{uuid.uuid4().hex[:8]}"
    post_training.supervised_fine_tune(
        job_uuid=job_uuid,
        model=model,
        training_config=training_config(dataset_id, 2),
        algorithm_config={
            "type": "LoRA",
            "lora_attn_modules": ["q_proj", "v_proj"],
            "apply_lora_to_mlp": False,
            "apply_lora_to_output": False,
            "rank": 4,
            "alpha": 8,
        },
        hyperparam_search_config={},
        logger_config={},
    )
    assert job_uuid in [j.job_uuid for j in post_training.job.list()]

    def status(uuid_: str) -> Any:
        if new:
            return post_training.job.status(uuid_)
        return post_training.job.status(job_uuid=uuid_)

    def finish(uuid_: str) -> Any:
        deadline = time.monotonic() + 180
        while (state := status(uuid_)).status not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job {uuid_} did not finish"
            time.sleep(0.3)
        return state

    state = finish(job_uuid)
    assert state.status == "completed", state
    assert state.scheduled_at and state.started_at and state.completed_at
    artifacts = (
        post_training.job.artifacts(job_uuid)
        if new
        else post_training.job.artifacts(job_uuid=job_uuid)
    )
    assert artifacts.job_uuid == job_uuid and artifacts.checkpoints
    final = artifacts.checkpoints[-1]
    assert final.post_training_job_id == job_uuid and final.epoch == 1

    # Cancel: a running job stops; a finished one is refused with a 400 (not a retried 409).
    # The minimal request: no algorithm config (LoRA), no optimizer config.
    long_job = f"lsc-{uuid.uuid4().hex[:8]}"
    post_training.supervised_fine_tune(
        job_uuid=long_job,
        model=model,
        training_config=minimal_training(dataset_id, "dialog", 200, new),
        hyperparam_search_config={},
        logger_config={},
    )
    if new:
        post_training.job.cancel(long_job)
    else:
        post_training.job.cancel(job_uuid=long_job)
    assert status(long_job).status == "cancelled"
    try:
        if new:
            post_training.job.cancel(job_uuid)
        else:
            post_training.job.cancel(job_uuid=job_uuid)
    except llama_stack_client.BadRequestError as exc:
        assert "already completed" in str(exc)
    else:
        raise AssertionError("cancelling a finished job succeeded")

    # DPO through preference_optimize, minimal requests, in each data format.
    dpo_jobs = []
    for data_format, rows in PAIRS.items():
        pairs = f"lsc-{uuid.uuid4().hex[:8]}"
        datasets.register(
            purpose="preference", source={"type": "rows", "rows": rows}, dataset_id=pairs
        )
        dpo_job = f"lsc-dpo-{uuid.uuid4().hex[:8]}"
        post_training.preference_optimize(
            job_uuid=dpo_job,
            finetuned_model=model,
            algorithm_config={"beta": 0.1} if new else {"beta": 0.1, "loss_type": "sigmoid"},
            training_config=minimal_training(pairs, data_format, 1, new),
            hyperparam_search_config={},
            logger_config={},
        )
        state = finish(dpo_job)
        assert state.status == "completed", state
        dpo_jobs.append(dpo_job)
        # The other format's prompt field is missing from these rows: refused by name.
        other = "instruct" if data_format == "dialog" else "dialog"
        try:
            post_training.preference_optimize(
                job_uuid=f"lsc-dpo-{uuid.uuid4().hex[:8]}",
                finetuned_model=model,
                algorithm_config={"beta": 0.1, "loss_type": "sigmoid"},
                training_config=minimal_training(pairs, other, 1, new),
                hyperparam_search_config={},
                logger_config={},
            )
        except llama_stack_client.BadRequestError as exc:
            assert "data_format" in str(exc), exc
        else:
            raise AssertionError(f"{other} over {data_format} rows was accepted")
    preferred = client.chat.completions.create(
        model=f"ft/{dpo_jobs[0]}",
        messages=[{"role": "user", "content": "Question 1: what is a blorp?"}],
        max_tokens=4,
    )
    assert preferred.choices[0].message.content

    # Chat with the fine-tuned model, whole and streamed (0.2.x cannot parse `data: [DONE]`).
    messages = [{"role": "user", "content": "Question 1: what is a blorp?"}]
    fine_tuned = f"ft/{job_uuid}"
    answer = client.chat.completions.create(model=fine_tuned, messages=messages, max_tokens=4)
    assert answer.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=fine_tuned, messages=messages, max_tokens=4, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason == "length"
    return {
        "llama_stack_client": version,
        "job": job_uuid,
        "dpo_jobs": dpo_jobs,
        "chunks": len(chunks),
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
