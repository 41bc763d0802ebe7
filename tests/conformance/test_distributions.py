"""One conformance suite that every distribution in `distributions/` passes.

Each YAML is started as a real server (`llama-post run`), its models replaced by a tiny one, and
driven over HTTP: models, chat and completions (streamed and not), the capabilities it declares
(`capabilities:` in the YAML: logprobs, fine-tuning, structured outputs), and a 2-step LoRA job
whose adapter is then served, with greedy output equal to the adapter's own under transformers +
peft in this process (so equal across every provider).

A distribution is run on each upstream it can front: `remote::vllm` against a second llama-post
server in the fast lane (it speaks vLLM's routes) and against a real vLLM, started from its own
environment (`make engine-vllm`), in the slow lane; `split` (`remote::llama-post`) against a
second llama-post that trains. `cluster` (the Ray launcher) needs a Ray
head, started from Ray's own environment (`make engine-ray`) on loopback: slow lane.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import (
    TINY,
    Server,
    distribution,
    engine_environment,
    free_port,
    parse_sse,
    ray_head,
)
from tests.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {
    yaml.safe_load(p.read_text())["distribution"]: p
    for p in sorted((ROOT / "distributions").glob("**/*.yaml"))
}
PROMPT = [{"role": "user", "content": "What is a blorp?"}]
ROWS = [
    {"prompt": f"Question {i}: what is a blorp?", "completion": "A blorp is a small blue fish."}
    for i in range(8)
]


@dataclass
class Context:
    """What a distribution's setup is given: its folder, and the tiny model. A setup starts the
    distribution's upstreams and yields (the env its YAML reads, capabilities they lack)."""

    home: Path
    model: Path


@dataclass
class Target:
    http: httpx.Client
    capabilities: set[str]
    model: Path  # the tiny model every upstream serves
    lacks: dict[str, str] = field(default_factory=dict)  # capability -> why this upstream lacks it


# Served outputs are compared token for token with plain peft in fp32 (`_greedy`); bf16 serving
# has its own tests (tests/server/test_mixed_precision.py).
EXACT = {"LLAMA_POST_DTYPE": "float32"}


@contextmanager
def embedded(ctx: Context) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    yield {"LLAMA_POST_MODEL_DIR": str(ctx.model.parent), **EXACT}, {}


@contextmanager
def vllm_over_llama_post(ctx: Context) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """A second llama-post serves the tiny model; it reads the adapters the front trains."""
    up_home = ctx.home / "upstream"
    config = distribution(
        up_home,
        ctx.model,
        inference={"model_dirs": [str(ctx.model.parent), str(ctx.home / "checkpoints")]},
    )
    with _started(Server(config, _mkdir(up_home))) as upstream:
        yield {"VLLM_URL": upstream.url}, {}


@contextmanager
def vllm_over_vllm(ctx: Context) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    from providers.remote.inference.vllm.launch import command, environment

    env_dir = engine_environment("vllm")
    port = free_port()
    log = ctx.home / "vllm.log"
    argv = command(env_dir, ctx.model, TINY, port=port, max_model_len=256, max_lora_rank=8)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment())
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", proc, log, timeout=240)
        yield {"VLLM_URL": f"http://127.0.0.1:{port}", "VLLM_MAX_LORA_RANK": "8"}, {}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def torchtune(ctx: Context) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The embedded default trained by torchtune, in its environment (`make engine-torchtune`)."""
    engine_environment("torchtune")
    yield {"LLAMA_POST_MODEL_DIR": str(ctx.model.parent), **EXACT}, {}


@contextmanager
def cluster(ctx: Context) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """Jobs as Ray jobs on a local Ray head (`make engine-ray`; the job folders and checkpoints
    are on this machine, which every "node" shares), vLLM's routes served by a second
    llama-post. Slow lane: the head takes ~10 s and 1.6 GiB."""
    with ray_head() as address, vllm_over_llama_post(ctx) as (env, lacks):
        yield {**env, "RAY_ADDRESS": address}, lacks


@contextmanager
def split_over_a_trainer(ctx: Context) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """A second llama-post is the trainer box: the front's files, datasets and jobs are its."""
    trainer_home = ctx.home / "trainer"
    with _started(Server(distribution(trainer_home, ctx.model), _mkdir(trainer_home))) as trainer:
        yield (
            {
                "TRAINER_URL": trainer.url,
                "TRAINER_POLL_SECONDS": "0.5",
                "LLAMA_POST_MODEL_DIR": str(ctx.model.parent),
                **EXACT,
            },
            {},
        )


TARGETS = [
    pytest.param(("embedded", embedded), id="embedded"),
    pytest.param(("torchtune", torchtune), id="torchtune", marks=pytest.mark.slow),
    pytest.param(("vllm", vllm_over_llama_post), id="vllm-over-llama-post"),
    pytest.param(("vllm", vllm_over_vllm), id="vllm-over-vllm", marks=pytest.mark.slow),
    pytest.param(("cluster", cluster), id="cluster", marks=pytest.mark.slow),
    pytest.param(("split", split_over_a_trainer), id="split-over-a-trainer"),
]


def test_every_distribution_has_a_conformance_setup() -> None:
    covered = {p.values[0][0] for p in TARGETS}  # type: ignore[index]
    assert set(DISTRIBUTIONS) <= covered, f"add a setup for {set(DISTRIBUTIONS) - covered}"


@pytest.fixture(scope="module", params=TARGETS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer: Any
) -> Iterator[Target]:
    name, setup = request.param
    home = tmp_path_factory.mktemp(f"conformance-{name}")
    model = build_tiny_model(home / "models" / "tiny", tokenizer, heads=2)  # head size 32
    raw = yaml.safe_load(DISTRIBUTIONS[name].read_text())
    raw["models"] = [_tiny(declared["source"], model) for declared in raw.get("models", [])[:1]]
    with ExitStack() as stack:
        env, lacks = stack.enter_context(setup(Context(home, model)))
        env = {
            "LLAMA_POST_HOME": str(home),
            "LLAMA_POST_IMPORT_DIR": str(_mkdir(home / "import")),
            **env,
        }
        server = stack.enter_context(_started(Server(raw, _mkdir(home / "front"), env)))
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=120))
        yield Target(http, set(raw.get("capabilities", [])) - set(lacks), model, lacks)


# -- the suite ---------------------------------------------------------------------------------


def test_models(target: Target) -> None:
    listed = target.http.get("/v1/models").json()["data"]
    tiny = next(m for m in listed if m["id"] == TINY)
    assert tiny["object"] == "model" and tiny["kind"] == "base"
    assert tiny["context_length"] == 256
    assert target.http.get(f"/v1/models/{TINY}").json()["id"] == TINY
    assert target.http.get("/v1/models/no/such-model").status_code == 404
    health = target.http.get("/v1/health").json()
    assert health["status"] == "OK", health


def test_chat_streamed_and_not(target: Target) -> None:
    body = {"model": TINY, "messages": PROMPT, "max_tokens": 6, "temperature": 0}
    whole = target.http.post("/v1/chat/completions", json=body).json()
    assert whole["model"] == TINY and whole["object"] == "chat.completion"
    text = whole["choices"][0]["message"]["content"]
    assert whole["usage"]["completion_tokens"] == 6
    assert whole["choices"][0]["finish_reason"] == "length"

    stream = target.http.post("/v1/chat/completions", json={**body, "stream": True})
    events = parse_sse(stream.content)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == TINY for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text


def test_completions_streamed_and_not(target: Target) -> None:
    body = {"model": TINY, "prompt": "A blorp is", "max_tokens": 5, "temperature": 0}
    whole = target.http.post("/v1/completions", json=body).json()
    text = whole["choices"][0]["text"]
    assert whole["usage"]["completion_tokens"] == 5
    events = parse_sse(target.http.post("/v1/completions", json={**body, "stream": True}).content)
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == text


def test_stop_and_seed(target: Target) -> None:
    body = {"model": TINY, "messages": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 7}
    first = target.http.post("/v1/chat/completions", json=body).json()
    again = target.http.post("/v1/chat/completions", json=body).json()
    assert first["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    greedy = {**body, "temperature": 0}
    text = target.http.post("/v1/chat/completions", json=greedy).json()["choices"][0]["message"]
    words = text["content"].split()
    if len(words) > 1:  # stop at the second word: what comes before it is all that is left
        stopped = target.http.post("/v1/chat/completions", json={**greedy, "stop": [words[1]]})
        answer = stopped.json()["choices"][0]
        assert words[1] not in answer["message"]["content"] and answer["finish_reason"] == "stop"


def test_logprobs(target: Target) -> None:
    _require(target, "logprobs")
    body = {
        "model": TINY,
        "messages": PROMPT,
        "max_tokens": 3,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    choice = target.http.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 3
    for token in content:
        assert token["logprob"] <= 0 and len(token["top_logprobs"]) == 2
        assert token["logprob"] == pytest.approx(token["top_logprobs"][0]["logprob"], abs=1e-4)
    body = {"model": TINY, "prompt": "A blorp is", "max_tokens": 3, "temperature": 0}
    logprobs = target.http.post("/v1/completions", json={**body, "logprobs": 2}).json()
    assert len(logprobs["choices"][0]["logprobs"]["token_logprobs"]) == 3


def test_prompt_scoring(target: Target, tokenizer: Any) -> None:
    """lm-eval's log-likelihood request (echo, logprobs, token ids) with `max_tokens` 0: each
    prompt token's logprob as transformers computes it in this process, on every upstream."""
    _require(target, "logprobs")
    ids = tokenizer("A blorp is a small blue fish", add_special_tokens=False)["input_ids"]
    body = {"model": TINY, "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 0}
    answer = target.http.post("/v1/completions", json={**body, "temperature": 0})
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["text"] == tokenizer.decode(ids)
    logprobs = choice["logprobs"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    chosen, best = _prompt_logprobs(target.model, ids)
    assert logprobs["token_logprobs"][1:] == pytest.approx(chosen, abs=1e-4)
    assert [max(top.values()) for top in logprobs["top_logprobs"][1:]] == pytest.approx(
        best, abs=1e-4
    )


def test_structured_outputs(target: Target) -> None:
    body = {
        "model": TINY,
        "messages": PROMPT,
        "max_tokens": 5,
        "temperature": 0,
        "structured_outputs": {"choice": ["yes", "no"]},
    }
    answer = target.http.post("/v1/chat/completions", json=body)
    if "structured_outputs" not in target.capabilities:
        assert answer.status_code == 400, answer.text  # refused by name, not ignored
        assert "structured_outputs" in answer.json()["error"]["message"]
        return
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_a_lora_job_is_served_with_the_same_greedy_output(target: Target) -> None:
    _require(target, "fine_tuning")
    http = target.http
    dataset_id = f"conf-{uuid.uuid4().hex[:6]}"
    made = http.post(
        "/v1/datasets",
        json={
            "dataset_id": dataset_id,
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    body = {
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": 2,
            "data_config": {"dataset_id": dataset_id, "batch_size": 4},
            "optimizer_config": {"lr": 1e-1},
            "seed": 0,
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    limit = http.get(f"/v1/models/{TINY}").json()["max_lora_rank"]
    if limit is not None:  # an adapter its provider could not serve is refused before training
        too_big = {**body, "algorithm_config": {"type": "LoRA", "rank": limit * 2}}
        refused = http.post("/v1/post-training/supervised-fine-tune", json=too_big)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "algorithm_config.rank"
    job = http.post("/v1/post-training/supervised-fine-tune", json=body)
    assert job.status_code == 200, job.text
    status = _finished(http, job.json()["job_uuid"])
    assert status["status"] == "completed", status
    model_id = status["fine_tuned_model"]
    record = http.get(f"/v1/models/{model_id}").json()
    assert record["kind"] == "adapter" and record["base_model"] == TINY

    chat = {"model": model_id, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    served = http.post("/v1/chat/completions", json=chat)
    assert served.status_code == 200, served.text
    base = http.post("/v1/chat/completions", json={**chat, "model": TINY}).json()
    text = served.json()["choices"][0]["message"]["content"]
    assert text == _greedy(record["weights"]["path"], record["weights"]["adapter_path"], 8)
    assert text != base["choices"][0]["message"]["content"]  # the adapter is what answered

    assert http.delete(f"/v1/models/{model_id}").status_code == 200
    gone = http.post("/v1/chat/completions", json=chat)
    assert gone.status_code == 404


def test_openai_fine_tuning_over_its_trainer(target: Target) -> None:
    """The openai SDK's fine-tuning flow, over whichever provider trains in this distribution."""
    _require(target, "fine_tuning")
    import openai

    base_url = str(target.http.base_url).rstrip("/")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    chats = [
        {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"]},
            ]
        }
        for row in ROWS
    ]
    lines = "".join(json.dumps(c) + "\n" for c in chats).encode()
    upload = client.files.create(file=("chats.jsonl", io.BytesIO(lines)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload.id,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
        },
    )
    deadline = time.monotonic() + 180
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{job.id} did not finish"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]  # one per epoch, newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    chat = client.chat.completions.create(
        model=str(job.fine_tuned_model),
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=4,
    )
    assert chat.choices[0].message.content is not None
    assert target.http.delete(f"/v1/models/{job.fine_tuned_model}").status_code == 200


# -- helpers -----------------------------------------------------------------------------------


def _tiny(source: dict[str, Any], model: Path) -> dict[str, Any]:
    """The distribution's model declaration, naming the tiny model instead."""
    if source["type"] == "provider_model":  # the upstream serves the tiny model as TINY
        return {"model_id": TINY, "source": {**source, "provider_model_id": TINY}}
    return {"model_id": TINY, "source": {"type": "huggingface", "path": str(model)}}


def _greedy(base: str, adapter: str, tokens: int) -> str:
    """The adapter's greedy answer under transformers + peft, in this process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)  # type: ignore[no-untyped-call]
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _prompt_logprobs(model_dir: Path, ids: list[int]) -> tuple[list[float], list[float]]:
    """Each token's logprob after the first, and the likeliest's there, under transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        raw = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    chosen = raw.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return chosen.tolist(), raw.max(dim=-1).values.tolist()


def _finished(http: httpx.Client, job_uuid: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = http.get(f"/v1/post-training/jobs/{job_uuid}").json()
        if status["status"] in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_uuid} did not finish")


def _require(target: Target, capability: str) -> None:
    if capability not in target.capabilities:
        reason = target.lacks.get(capability, "the distribution does not declare it")
        pytest.skip(f"{capability}: {reason}")


@contextmanager
def _started(server: Server) -> Iterator[Server]:
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM did not start in {timeout} s:\n{log.read_text()[-4000:]}")
