"""Two post-training providers in one distribution: a job runs on the one its request names (else
the first), every later call finds it, and OpenAI's fine-tuning jobs are served over both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from llama_post import LlamaPostClient
from llama_post.errors import ConflictError, NotFoundError
from tests.support import TINY, distribution

ROWS = [{"prompt": f"Q{i}: what is a blorp?", "completion": "A small fish."} for i in range(8)]


def two_trainers(home: Path, model: Path) -> dict[str, Any]:
    run = distribution(home, model)
    first = run["providers"]["post_training"][0]
    second = {
        **first,
        "provider_id": "second",
        "config": {**first["config"], "storage_dir": str(home / "post-training-2")},
    }
    run["providers"]["post_training"].append(second)
    return run


def job(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": 1,
            "data_config": {"dataset_id": dataset_id, "batch_size": 4},
        },
        **extra,
    }


def finished(client: Any, job_uuid: str) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.post_training.get_job_status(job_uuid)
        if status.status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_uuid} did not finish")


def test_jobs_run_where_their_request_says(tmp_path: Path, tiny_model: Path) -> None:
    with LlamaPostClient(two_trainers(tmp_path, tiny_model)) as lib:
        client: Any = lib
        rows = {"type": "rows", "rows": ROWS}
        client.datasets.register_dataset(dataset_id="d", purpose="instruct", source=rows)

        on_second = client.post_training.supervised_fine_tune(
            job("d", job_uuid="sft-on-second", provider_id="second")
        )
        on_first = client.post_training.supervised_fine_tune(job("d", job_uuid="sft-on-first"))
        assert finished(client, on_second.job_uuid).status == "completed"
        assert finished(client, on_first.job_uuid).status == "completed"
        second = client.post_training.get_job_status("sft-on-second")
        assert second.provider_id == "second" and second.fine_tuned_model == "ft/sft-on-second"
        assert client.post_training.get_job_status("sft-on-first").provider_id == "peft"
        assert (tmp_path / "post-training-2" / "jobs" / "sft-on-second").is_dir()
        listed = {j.job_uuid for j in client.post_training.list_jobs().data}
        assert {"sft-on-first", "sft-on-second"} <= listed
        assert client.post_training.get_job_metrics("sft-on-second").data
        # OpenAI's view is served over both providers.
        openai_ids = {j.id for j in client.post_training.list_fine_tuning_jobs({}).data}
        assert {"sft-on-first", "sft-on-second"} <= openai_ids
        assert client.post_training.retrieve_fine_tuning_job("sft-on-second").status == "succeeded"

        with pytest.raises(ConflictError, match="already exists"):
            client.post_training.supervised_fine_tune(
                job("d", job_uuid="sft-on-second", provider_id="peft")
            )
        with pytest.raises(NotFoundError, match="provider_id: no post-training provider 'x'"):
            client.post_training.supervised_fine_tune(job("d", provider_id="x"))
        with pytest.raises(NotFoundError):
            client.post_training.get_job_status("sft-nowhere")
