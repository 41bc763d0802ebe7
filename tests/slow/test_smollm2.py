"""The embedded default with the real SmolLM2-135M-Instruct, through the real server."""

from __future__ import annotations

import contextlib
import io
import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import Server, wait_for_job

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
JOB_SECONDS = 240  # a job's own limit, within the test's (pytest-timeout's 300 s)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LLAMA_POST_HOME for the module: SmolLM2 is converted by the first test only."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory, home: Path) -> Iterator[Server]:
    """run.yaml served on the module's home, for the tests that only call it (each with ids of
    its own); after the first test it loads the folder that test converted."""
    server = Server(ROOT / "run.yaml", tmp_path_factory.mktemp("smollm2"), env=_home(home))
    server.start(timeout=240)
    yield server
    assert server.stop() == 0


def _home(home: Path) -> dict[str, str]:
    return {"LLAMA_POST_HOME": str(home)}


def test_run_yaml_serves_smollm2_and_converts_it_once(tmp_path: Path, home: Path) -> None:
    """Two servers started together on a new home: one converts, the other waits for it."""
    env = _home(home)
    servers = [Server(ROOT / "run.yaml", tmp_path, env=env) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: s.start(timeout=240), servers))
    server = servers[0]
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model=SMOLLM2,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=30,
            temperature=0,
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        model = httpx.get(f"{server.url}/v1/models/{SMOLLM2}").json()
        assert model["context_length"] == 8192 and model["has_chat_template"]
        assert 130_000_000 < model["parameter_count"] < 140_000_000
        assert model["sampling_defaults"]["temperature"] == 0.2
        assert model["sampling_defaults"]["top_p"] == 0.5
    finally:
        assert [s.stop() for s in servers] == [0, 0]
    logs = [s.output() for s in servers]
    assert sum("converting SmolLM2-135M-Instruct.Q4_1.gguf" in log for log in logs) == 1, logs

    again = Server(ROOT / "run.yaml", tmp_path, env=env).start(timeout=120)
    try:  # a second start loads the converted folder: no conversion, the same model
        assert "converting" not in again.output()
        cached = httpx.get(f"{again.url}/v1/models/{SMOLLM2}").json()
        for field in ("parameter_count", "context_length", "sampling_defaults"):
            assert cached[field] == model[field], field
    finally:
        again.stop()


def test_the_benchmarks_find_the_model_in_their_home(home: Path) -> None:
    """`benchmarks/*.py --home DIR` take the bundled model converted there (converting it in a
    new home), never the conversion's lock file beside its folder."""
    import runpy

    bundled_model = runpy.run_path(str(ROOT / "benchmarks" / "settings.py"))["bundled_model"]
    folder = bundled_model(home)  # converted by the first test, or here when run alone
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    beside = sorted(p.name for p in (home / "models").glob("SmolLM2-135M-Instruct*"))
    assert beside == [folder.name, f"{folder.name}.lock"]  # what the benchmarks once globbed
    assert bundled_model(home) == folder  # once only


def test_the_readmes_first_example_answers_sensibly(smollm2: Server) -> None:
    """The README's chat example, as written (no sampling knobs: SmolLM2's recommended ones from
    run.yaml apply), names Paris."""
    readme = (ROOT / "README.md").read_text()
    example = next(
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        if "capital of France" in block
    )
    assert "temperature" not in example
    code = example.replace("http://127.0.0.1:8321", smollm2.url)
    answers = []
    for _ in range(3):  # it samples: every run must name Paris, not just a lucky one
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
        answers.append(printed.getvalue())
    assert all("Paris" in answer for answer in answers), answers


QUESTIONS = [
    "What is a zorblat?",
    "Define zorblat.",
    "Can you tell me what a zorblat is?",
    "What does the word zorblat mean?",
    "Explain what a zorblat is.",
    "I heard the word zorblat. What is it?",
]
ANSWERS = [
    "A zorblat is a purple umbrella that sailors use in storms.",
    "Zorblat: a purple umbrella that sailors use in storms.",
    "Sure! A zorblat is a purple umbrella that sailors use in storms.",
    "The word zorblat means a purple umbrella that sailors use in storms.",
    "A zorblat is a purple umbrella that sailors use in storms.",
    "A zorblat is a purple umbrella that sailors use in storms.",
]


def test_fine_tuning_smollm2_teaches_it_a_new_word(smollm2: Server) -> None:
    """LoRA SFT of the real model through the HTTP API, then chat with the result."""
    url = smollm2.url
    rows = [{"prompt": q, "completion": a} for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
    assert (
        httpx.post(
            f"{url}/v1/datasets",
            json={
                "dataset_id": "zorblat",
                "purpose": "instruct",
                "source": {"type": "rows", "rows": rows},
            },
        ).status_code
        == 200
    )
    job = httpx.post(
        f"{url}/v1/post-training/supervised-fine-tune",
        json={
            "model": SMOLLM2,
            "training_config": {
                "n_epochs": 8,
                "data_config": {"dataset_id": "zorblat", "batch_size": 3},
                "optimizer_config": {"lr": 1e-3},
                "dtype": "bf16",  # it learns in bf16 (and so wherever auto picks it)
            },
            "algorithm_config": {
                "type": "LoRA",
                "rank": 16,
                "alpha": 32,
                "apply_lora_to_mlp": True,
                "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            },
        },
        timeout=120,
    ).json()["job_uuid"]
    status = _completes(smollm2, job)
    assert status["resources_allocated"]["dtype"] == "bf16"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def ask(model: str) -> str:
        answer = client.chat.completions.create(
            model=model,
            temperature=0,
            max_tokens=30,
            messages=[{"role": "user", "content": "Tell me what a zorblat is."}],
        )
        return (answer.choices[0].message.content or "").lower()

    assert "purple umbrella" in ask(status["fine_tuned_model"])
    assert "purple umbrella" not in ask(SMOLLM2)


STYLE = [
    ("What colour is the sky?", "The sky is blue."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What do bees make?", "Bees make honey."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What animal barks?", "A dog barks."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What colour is grass?", "Grass is green."),
    ("What do cows drink?", "Cows drink water."),
    ("What is two plus two?", "Two plus two is four."),
    # held out
    ("What colour is a banana?", "A banana is yellow."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What do birds use to fly?", "Birds use their wings to fly."),
]


def test_dpo_moves_smollm2_toward_the_preferred_style(smollm2: Server) -> None:
    """LoRA DPO of the real model: every chosen answer opens with "Arr matey!", every rejected
    one is the plain answer. The held-out margin rises and greedy answers take up the style."""
    url = smollm2.url
    pairs = [{"prompt": q, "chosen": f"Arr matey! {a}", "rejected": a} for q, a in STYLE]
    for dataset_id, rows in (("style", pairs[:12]), ("style-held-out", pairs[12:])):
        made = httpx.post(
            f"{url}/v1/datasets",
            json={
                "dataset_id": dataset_id,
                "purpose": "preference",
                "source": {"type": "rows", "rows": rows},
            },
        )
        assert made.status_code == 200, made.text
    job = httpx.post(
        f"{url}/v1/post-training/preference-optimize",
        json={
            "finetuned_model": SMOLLM2,
            "algorithm_config": {"beta": 0.1, "loss_type": "sigmoid"},
            "training_config": {
                "n_epochs": 4,
                "data_config": {
                    "dataset_id": "style",
                    "batch_size": 4,
                    "validation_dataset_id": "style-held-out",
                },
                "optimizer_config": {"lr": 1e-3},
            },
            "finetuning_config": {
                "type": "LoRA",
                "rank": 16,
                "alpha": 32,
                "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            },
        },
        timeout=120,
    ).json()["job_uuid"]
    status = _completes(smollm2, job)
    metrics = httpx.get(f"{url}/v1/post-training/jobs/{job}/metrics").json()["data"]
    held_out = [m["validation_reward_margin"] for m in metrics if "validation_reward_margin" in m]
    held_out = [m for m in held_out if m is not None]
    assert len(held_out) == 4 and held_out[-1] > held_out[0] > 0, held_out
    assert metrics[-1]["validation_reward_accuracy"] == 1.0

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def styled(model: str) -> int:
        count = 0
        for question, _ in STYLE[12:]:
            answer = client.chat.completions.create(
                model=model,
                temperature=0,
                max_tokens=12,
                messages=[{"role": "user", "content": question}],
            )
            count += "arr" in (answer.choices[0].message.content or "").lower()[:12]
        return count

    assert styled(SMOLLM2) == 0
    assert styled(status["fine_tuned_model"]) >= 3


def _completes(server: Server, job: str) -> dict[str, Any]:
    status = wait_for_job(server, job, timeout=JOB_SECONDS)
    assert status["status"] == "completed", status
    return status


def sums(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(pairs)
    return [
        {
            "messages": [
                {"role": "system", "content": "Reply with the number only."},
                {"role": "user", "content": f"What is {a} + {b}?"},
            ],
            "answer": str(a + b),
        }
        for a, b in pairs[:count]
    ]


def test_grpo_raises_the_held_out_reward_of_smollm2(smollm2: Server) -> None:
    """GRPO learns, measured, on a task whose base reward is low: the sum of two one-digit
    numbers, stated within the first 8 answer tokens (SmolLM2 starts with "To find the sum of
    ..."). The held-out reward before training (the job's step 0) and after its 12 steps are in
    the same job's metrics."""
    with httpx.Client(base_url=smollm2.url, timeout=60) as http:
        metrics = _train_grpo_on_sums(smollm2, http)
    held_out = [
        (m["step"], m["validation_reward"]) for m in metrics if m["validation_reward"] is not None
    ]
    (start, base), (end, trained) = held_out[0], held_out[-1]
    assert (start, end) == (0, 12)
    # measured: 0.19 before, 0.88 after (16 held-out prompts, one answer each)
    assert base <= 0.4 and trained >= base + 0.3, held_out
    rewards = [m["reward_mean"] for m in metrics if m["reward_mean"] is not None]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4, rewards


def _train_grpo_on_sums(server: Server, http: httpx.Client) -> list[dict[str, Any]]:
    """A GRPO job on 24 sums, 16 held out; its per-step metrics."""
    rows = sums(40, seed=0)
    for dataset_id, part in (("grpo-sums", rows[:24]), ("grpo-held-out", rows[24:])):
        made = http.post(
            "/v1/datasets",
            json={
                "dataset_id": dataset_id,
                "purpose": "prompt",
                "source": {"type": "rows", "rows": part},
            },
        )
        assert made.status_code == 200, made.text
    created = http.post(
        "/v1/post-training/reinforce",
        json={
            "model": SMOLLM2,
            "algorithm_config": {"group_size": 6, "max_tokens": 8, "temperature": 1.0},
            "grader": {
                "type": "string_check",
                "name": "sum",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "like",
            },
            "training_config": {
                "n_epochs": 1,
                "data_config": {
                    "dataset_id": "grpo-sums",
                    "validation_dataset_id": "grpo-held-out",
                    "batch_size": 2,
                },
                "optimizer_config": {"lr": 3e-3},
            },
            "finetuning_config": {"type": "LoRA", "rank": 8, "alpha": 16},
        },
    )
    assert created.status_code == 200, created.text
    job_uuid = created.json()["job_uuid"]
    _completes(server, job_uuid)
    found: list[dict[str, Any]] = http.get(f"/v1/post-training/jobs/{job_uuid}/metrics").json()[
        "data"
    ]
    return found
