"""inline::torchtune: torchtune's own recipes in torchtune's environment (`make
engine-torchtune`), beside inline::peft in one real server.

Both trainers train on the same tokens (llama-post renders and tokenizes the rows for both), so a
LoRA job's first step, taken on a zero-initialised adapter, has the same loss under each.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_post import LlamaPostClient
from llama_post.errors import ConfigError
from tests.support import TINY, Server, distribution, engine_environment, wait_for_job

ROWS = [
    {"prompt": f"Question {i}: what is a blorp?", "completion": f"A blorp is fish number {i}."}
    for i in range(8)
]
PAIRS = [
    {"prompt": f"Tell me fact {i}.", "chosen": f"Fact {i}: blorps are blue.", "rejected": "No."}
    for i in range(8)
]
LONG = [
    {"prompt": f"Tell me fact {i}.", "completion": f"Fact {i} is that blorps are blue."}
    for i in range(120)
]


def _config(home: Path, model: Path) -> dict[str, Any]:
    config = distribution(home, model)
    config["providers"]["post_training"].append(
        {
            "provider_id": "torchtune",
            "provider_type": "inline::torchtune",
            "config": {
                "storage_dir": str(home / "torchtune"),
                "checkpoint_root": str(home / "checkpoints"),
                "torch_threads": 1,
                "max_concurrent_jobs": 2,
            },
        }
    )
    return config


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    engine_environment("torchtune")
    return tmp_path_factory.mktemp("torchtune")


@pytest.fixture(scope="module")
def server(home: Path, tiny_model: Path) -> Iterator[Server]:
    srv = Server(_config(home, tiny_model), home).start(timeout=120)
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for dataset_id, purpose, rows in (
            ("rows", "instruct", ROWS),
            ("pairs", "preference", PAIRS),
            ("long", "instruct", LONG),
        ):
            made = http.post(
                "/v1/datasets",
                json={
                    "dataset_id": dataset_id,
                    "purpose": purpose,
                    "source": {"type": "rows", "rows": rows},
                },
            )
            assert made.status_code == 200, made.text
    yield srv
    srv.stop()


def _body(provider: str, method: str = "sft", **training: Any) -> dict[str, Any]:
    lora = {"type": "LoRA", "rank": 4, "alpha": 8}
    config = {
        "n_epochs": 1,
        "max_steps_per_epoch": 2,
        "data_config": {
            "dataset_id": "rows" if method == "sft" else "pairs",
            "batch_size": 2,
            "shuffle": False,
        },
        "optimizer_config": {"lr": 5e-2},
        "seed": 0,
        "dtype": "fp32",  # the same losses to 1e-4: torchtune's bf16 trains LoRA in bf16 too
        **training,
    }
    if method == "sft":
        return {
            "model": TINY,
            "provider_id": provider,
            "training_config": config,
            "algorithm_config": lora,
        }
    return {
        "finetuned_model": TINY,
        "provider_id": provider,
        "training_config": config,
        "finetuning_config": lora,
    }


def _run(server: Server, body: dict[str, Any], method: str = "sft") -> dict[str, Any]:
    route = "supervised-fine-tune" if method == "sft" else "preference-optimize"
    made = httpx.post(f"{server.url}/v1/post-training/{route}", json=body, timeout=60)
    assert made.status_code == 200, made.text
    return wait_for_job(
        server,
        made.json()["job_uuid"],
        lambda s: s["status"] in ("completed", "failed", "cancelled"),
    )


def _metrics(server: Server, job_uuid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(
        f"{server.url}/v1/post-training/jobs/{job_uuid}/metrics"
    ).json()["data"]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_first_step_losses_agree_with_peft(server: Server, method: str) -> None:
    first = {}
    for provider in ("peft", "torchtune"):
        status = _run(server, _body(provider, method), method)
        assert status["status"] == "completed", status
        assert status["provider_id"] == provider
        metrics = _metrics(server, status["job_uuid"])
        assert [m["step"] for m in metrics] == [1, 2]
        first[provider] = metrics[0]["loss"]
        if provider == "torchtune":
            torchtune = status
    assert abs(first["peft"] - first["torchtune"]) < 1e-4, first
    if method == "dpo":  # a zero-initialised adapter is its own reference: -log sigmoid(0)
        assert abs(first["torchtune"] - 0.6931) < 1e-3

    # the adapter alone is published, and served over the base as ft/<job>
    (checkpoint,) = torchtune["checkpoints"]
    assert checkpoint["step"] == 2 and checkpoint["epoch"] == 0
    assert checkpoint["model_id"] == torchtune["fine_tuned_model"]
    folder = Path(checkpoint["path"])
    assert (folder / "adapter_model.safetensors").is_file()
    assert not list(folder.glob("model*.safetensors"))  # no merged weights beside it
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": torchtune["fine_tuned_model"],
            "messages": [{"role": "user", "content": "What is a blorp?"}],
            "max_tokens": 4,
        },
        timeout=60,
    )
    assert chat.status_code == 200, chat.text


@pytest.mark.slow
def test_a_full_fine_tune_agrees_with_peft_and_is_served(server: Server) -> None:
    """torchtune's full_finetune_single_device: the first step's loss as peft's, and each
    epoch's whole model published as a Hugging Face folder, served as ft/<job>."""
    first = {}
    for provider in ("peft", "torchtune"):
        body = _body(provider, optimizer_config={"lr": 1e-3}) | {
            "algorithm_config": {"type": "full"}
        }
        status = _run(server, body)
        assert status["status"] == "completed", status
        metrics = _metrics(server, status["job_uuid"])
        assert [m["step"] for m in metrics] == [1, 2]
        first[provider] = metrics[0]["loss"]
    assert abs(first["peft"] - first["torchtune"]) < 1e-4, first
    (checkpoint,) = status["checkpoints"]
    folder = Path(checkpoint["path"])
    assert (folder / "config.json").is_file() and list(folder.glob("model*.safetensors"))
    assert not list(folder.glob("adapter_*"))
    assert (
        httpx.get(f"{server.url}/v1/models/{status['fine_tuned_model']}").json()["kind"] == "base"
    )
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": status["fine_tuned_model"],
            "messages": [{"role": "user", "content": "What is a blorp?"}],
            "max_tokens": 4,
        },
        timeout=60,
    )
    assert chat.status_code == 200, chat.text


@pytest.mark.slow
def test_a_qwen2_model_trains_the_same_under_both(server: Server, tiny_model: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = tiny_model.parent / "qwen2"  # where the inference provider reads models
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    registered = httpx.post(
        f"{server.url}/v1/models",
        json={"model_id": "tiny/qwen2", "source": {"type": "huggingface", "path": str(folder)}},
        timeout=60,
    )
    assert registered.status_code == 200, registered.text
    first = {}
    for provider in ("peft", "torchtune"):
        lora = {
            "type": "LoRA",
            "rank": 4,
            "alpha": 8,
            "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        }
        body = _body(provider) | {"model": "tiny/qwen2", "algorithm_config": lora}
        status = _run(server, body)
        assert status["status"] == "completed", status
        first[provider] = _metrics(server, status["job_uuid"])[0]["loss"]
    assert abs(first["peft"] - first["torchtune"]) < 1e-4, first
    served = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": status["fine_tuned_model"],
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
        },
        timeout=60,
    )
    assert served.status_code == 200, served.text


@pytest.mark.slow
def test_refused_at_creation_by_name(server: Server, tiny_model: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    before = httpx.get(f"{server.url}/v1/post-training/jobs").json()["data"]

    other = tiny_model.parent / "gpt2"  # where the inference provider reads models
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=49152, bos_token_id=1, eos_token_id=2)
    ).save_pretrained(other)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(other)
    registered = httpx.post(
        f"{server.url}/v1/models",
        json={"model_id": "tiny/gpt2", "source": {"type": "huggingface", "path": str(other)}},
        timeout=60,
    )
    assert registered.status_code == 200, registered.text
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**_body("torchtune"), "model": "tiny/gpt2"}, "model", "llama and qwen2"),
        (
            _body("torchtune", max_steps_per_epoch=None, save_every=3),
            "training_config.save_every",
            "every 4 steps here",
        ),
        (
            {
                **_body("torchtune"),
                "algorithm_config": {"type": "LoRA", "lora_attn_modules": ["gate"]},
            },
            "algorithm_config.lora_attn_modules",
            "o_proj",
        ),
        (
            {
                **_body("torchtune"),
                "algorithm_config": {"type": "LoRA", "apply_lora_to_output": True},
            },
            "algorithm_config.apply_lora_to_output",
            "ties",
        ),
    ]
    data = _body("torchtune")["training_config"]["data_config"]
    cases.append(
        (
            _body("torchtune", data_config={**data, "validation_split": 0.25}),
            "training_config.data_config.validation_split",
            "validation",
        )
    )
    cases.append(
        (
            _body("torchtune", data_config={**data, "batch_size": 16}),
            "training_config.data_config.batch_size",
            "partial batch",
        )
    )
    cases.append(
        (
            {**_body("torchtune"), "supervision": {"on_nonfinite": "skip"}},
            "supervision.on_nonfinite",
            "can only stop",
        )
    )
    for body, param, words in cases:
        refused = httpx.post(
            f"{server.url}/v1/post-training/supervised-fine-tune", json=body, timeout=60
        )
        assert refused.status_code == 400, (param, refused.text)
        error = refused.json()["error"]
        assert error["param"] == param and words in error["message"], error
    ipo = _body("torchtune", "dpo") | {"algorithm_config": {"loss_type": "ipo"}}
    full_dpo = _body("torchtune", "dpo") | {"finetuning_config": {"type": "full"}}
    for body, param in ((ipo, "algorithm_config.loss_type"), (full_dpo, "finetuning_config.type")):
        refused = httpx.post(
            f"{server.url}/v1/post-training/preference-optimize", json=body, timeout=60
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert httpx.get(f"{server.url}/v1/post-training/jobs").json()["data"] == before


@pytest.mark.slow
def test_cancel_stops_the_recipe(server: Server) -> None:
    body = _body("torchtune", n_epochs=50, max_steps_per_epoch=None)
    body["training_config"]["data_config"] = {"dataset_id": "long", "batch_size": 1}
    made = httpx.post(f"{server.url}/v1/post-training/supervised-fine-tune", json=body, timeout=60)
    job_uuid = made.json()["job_uuid"]
    wait_for_job(server, job_uuid, lambda s: s["progress"]["step"] >= 1)
    cancelled = httpx.post(f"{server.url}/v1/post-training/jobs/{job_uuid}/cancel", timeout=60)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    pid = cancelled.json()["resources_allocated"]["worker_pid"]
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.slow
def test_a_killed_server_resumes_from_the_last_epoch(tmp_path: Path, tiny_model: Path) -> None:
    engine_environment("torchtune")
    config = _config(tmp_path, tiny_model)
    server = Server(config, tmp_path).start(timeout=120)
    made = httpx.post(
        f"{server.url}/v1/datasets",
        json={
            "dataset_id": "long",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": LONG[:20]},  # 10 steps an epoch
        },
    )
    assert made.status_code == 200, made.text
    training = {
        "n_epochs": 3,
        "data_config": {"dataset_id": "long", "batch_size": 2},
        "optimizer_config": {"lr": 1e-2, "num_warmup_steps": 3, "lr_scheduler": "cosine"},
        "seed": 3,
    }
    body = {
        "model": TINY,
        "provider_id": "torchtune",
        "training_config": training,
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    for job_uuid in ("straight", "killed"):  # one after the other: the kill must land early
        made = httpx.post(
            f"{server.url}/v1/post-training/supervised-fine-tune",
            json={**body, "job_uuid": job_uuid},
            timeout=60,
        )
        assert made.status_code == 200, made.text
        if job_uuid == "straight":
            wait_for_job(server, job_uuid, lambda s: s["status"] == "completed")
    wait_for_job(server, "killed", lambda s: s["progress"]["step"] >= 13)  # in epoch 1 of 0, 1, 2
    server.stop(signal.SIGKILL)

    again = Server(config, tmp_path).start(timeout=120)
    try:
        done = wait_for_job(again, "killed", lambda s: s["status"] in ("completed", "failed"))
        assert done["status"] == "completed", done
        logs = httpx.get(f"{again.url}/v1/post-training/jobs/killed/logs").json()["lines"]
        resumed = [line for line in logs if line.startswith("resuming from ")]
        assert len(resumed) == 1, "\n".join(logs[-40:])
        epoch = 0 if "step-000010" in resumed[0] else 1  # the kill landed in epoch 1 or 2
        assert resumed[0] == (
            f"resuming from step-{10 * (epoch + 1):06d}, the end of epoch {epoch}: torchtune "
            f"saves its state at epoch ends only, so epoch {epoch + 1} starts again from its "
            "first step"
        )
        metrics = {job: _metrics(again, job) for job in ("straight", "killed")}
        steps = [c["step"] for c in done["checkpoints"]]
    finally:
        again.stop()
    assert steps == [10, 20, 30]
    assert [m["step"] for m in metrics["killed"]] == list(range(1, 31))
    for straight, killed in zip(metrics["straight"], metrics["killed"], strict=True):
        assert abs(straight["lr"] - killed["lr"]) < 1e-12, (straight, killed)
        assert abs(straight["loss"] - killed["loss"]) < 1e-4, (straight, killed)


def test_a_missing_environment_is_a_startup_error_naming_the_make_target(
    tmp_path: Path, tiny_model: Path
) -> None:
    config = _config(tmp_path, tiny_model)
    config["providers"]["post_training"][-1]["config"]["environment"] = str(tmp_path / "none")
    with pytest.raises(ConfigError, match="make engine-torchtune"):
        LlamaPostClient(config).__enter__()
