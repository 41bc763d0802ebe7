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

    deadline = time.monotonic() + 180
    while (state := status(job_uuid)).status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.3)
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
    long_job = f"lsc-{uuid.uuid4().hex[:8]}"
    post_training.supervised_fine_tune(
        job_uuid=long_job,
        model=model,
        training_config=training_config(dataset_id, 200),
        algorithm_config={"lora_attn_modules": ["q_proj"], "rank": 2, "alpha": 4},  # no type
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
    return {"llama_stack_client": version, "job": job_uuid, "chunks": len(chunks)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
