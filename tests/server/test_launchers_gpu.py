"""The torchrun launcher on CUDA: its ranks join with NCCL and compute in bf16 (`dtype: auto`),
and the adapter they train serves. Skipped where no CUDA device is present."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from tests.support import TINY, Server, distribution, wait_for_job

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ROWS = [{"prompt": f"Fact {i}?", "completion": f"Fact {i}: blorps are blue."} for i in range(8)]


def test_torchrun_on_cuda_uses_nccl_and_bf16(tmp_path: Path, tiny_model: Path) -> None:
    ranks = min(2, torch.cuda.device_count())
    launcher = {"type": "torchrun", "nproc_per_node": ranks, "sharding": "fsdp"}
    config = distribution(tmp_path, tiny_model, post_training={"launcher": launcher})
    server = Server(config, tmp_path).start(timeout=120)
    try:
        made = httpx.post(
            f"{server.url}/v1/datasets",
            json={
                "dataset_id": "facts",
                "purpose": "instruct",
                "source": {"type": "rows", "rows": ROWS},
            },
        )
        assert made.status_code == 200, made.text
        body = {
            "job_uuid": "on-cuda",
            "model": TINY,
            "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
            "training_config": {
                "n_epochs": 1,
                "data_config": {"dataset_id": "facts", "batch_size": 2},
                "optimizer_config": {"lr": 1e-3},
            },
        }
        made = httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body)
        assert made.status_code == 200, made.text
        done = wait_for_job(server, "on-cuda")
        assert done["status"] == "completed", done["error"]
        assert done["resources_allocated"]["dtype"] == "bf16"
        logs = httpx.get(f"{server.url}/v1/post-training/jobs/on-cuda/logs").json()["lines"]
        assert any(f"{ranks} rank(s), backend nccl" in line for line in logs), logs[-20:]
        chat = {"model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "Hi"}]}
        served = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "max_tokens": 4})
        assert served.status_code == 200, served.text
    finally:
        server.stop()
