"""Scale's `scale-llm-engine` client (0.0.0b45), unchanged, against llama-post's `/llm-engine/`:
run in the pinned client's own environment (`pins/scale-llm-engine-0.0.0b45.txt`).

    python tests/compat/llm_engine_flow.py http://127.0.0.1:PORT KEY tiny/llama

It prints one JSON line of what it saw; every check is an `assert`. The guided completions
come last: until the serving provider decodes under constraints it refuses them (400), which
the report says (`guided`); once it does, each output is checked against its constraint. So is
the batch completion (`batch`), which needs a batch service (`/v1/batches`) in the stack.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["LLM_ENGINE_DISABLE_VERSION_CHECK"] = "1"  # else importing it calls PyPI

import requests
from llmengine import (
    Completion,
    CreateBatchCompletionsModelConfig,
    CreateBatchCompletionsV1RequestContent,
    File,
    FineTune,
    Model,
)
from llmengine.errors import BadRequestError, NotFoundError

ROWS = [(f"Question {i}: what is a blorp?", "A blorp is a small blue fish.") for i in range(4)]
TERMINAL = ("SUCCESS", "FAILURE", "CANCELLED")
PROMPT = "A blorp is"


def csv_file(folder: Path) -> Path:
    path = folder / "train.csv"
    lines = ["prompt,response"] + [f'"{p}","{r}"' for p, r in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait(job_id: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = FineTune.get(job_id)
        if job.status in TERMINAL:
            return job
        assert job.status in ("PENDING", "RUNNING"), job.status
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not finish")


def files(folder: Path) -> dict[str, Any]:
    path = csv_file(folder)
    with path.open("rb") as f:
        uploaded = File.upload(f)
    got = File.get(uploaded.id)
    assert got.filename == "train.csv" and got.size == path.stat().st_size, got
    assert uploaded.id in [f.id for f in File.list().files]
    assert File.download(uploaded.id).content == path.read_text()
    (folder / "gone.txt").write_bytes(b"bye")
    with (folder / "gone.txt").open("rb") as g:
        gone = File.upload(g).id
    assert File.delete(gone).deleted
    try:
        File.get(gone)
        raise AssertionError("a deleted file is still there")
    except NotFoundError:
        pass
    return {"id": uploaded.id, "size": got.size}


def fine_tunes(model: str, training_file: str) -> dict[str, Any]:
    try:
        FineTune.create(model=model, training_file=training_file, hyperparameters={"n_epochs": 1})
        raise AssertionError("an unknown hyperparameter was taken")
    except BadRequestError as exc:
        assert "hyperparameters.n_epochs" in str(exc), exc
    try:
        FineTune.create(model=model, training_file="file-nothing")
        raise AssertionError("a job naming no file was made")
    except NotFoundError as exc:
        assert "training_file" in str(exc), exc
    params = {
        "lr": 0.01,
        "epochs": 1,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "peft_config": {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0},
    }
    job = FineTune.create(
        model=model, training_file=training_file, hyperparameters=params, suffix="blorp"
    ).id
    second = FineTune.create(model=model, training_file=training_file).id
    assert FineTune.cancel(second).success
    assert job.startswith("llmft-blorp-")
    done = wait(job)
    assert done.status == "SUCCESS", done
    assert wait(second).status == "CANCELLED"
    assert not FineTune.cancel(second).success  # it had ended already
    listed = {j.id: j.status for j in FineTune.list().jobs}
    assert listed[job] == "SUCCESS" and listed[second] == "CANCELLED", listed
    events = FineTune.get_events(job).events
    assert events and all(e.message and e.level for e in events), events
    assert events == sorted(events, key=lambda e: e.timestamp or 0)
    try:
        FineTune.get("llmft-nothing")
        raise AssertionError("a job that does not exist was found")
    except NotFoundError:
        pass
    return {"job": job, "model": done.fine_tuned_model, "events": len(events)}


def models(name: str) -> dict[str, Any]:
    got = Model.get(name)
    assert got.name == name and got.status == "READY", got
    assert name in [m.name for m in Model.list().model_endpoints]
    urls = Model.download(name).urls
    ((archive, url),) = urls.items()
    fetched = requests.get(url, timeout=60)
    assert fetched.status_code == 200 and archive.endswith(".tar.gz")
    with tarfile.open(fileobj=io.BytesIO(fetched.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("adapter_model.safetensors") for n in names), names
    return {"archive": archive}


def completions(model: str) -> dict[str, Any]:
    sync = Completion.create(model=model, prompt=PROMPT, max_new_tokens=6, temperature=0)
    assert sync.output.num_completion_tokens >= 1 and sync.output.tokens is None, sync
    assert sync.output.num_prompt_tokens and sync.output.num_prompt_tokens > 0
    streamed = list(
        Completion.create(model=model, prompt=PROMPT, max_new_tokens=6, temperature=0, stream=True)
    )
    assert streamed and all(e.output is not None for e in streamed), streamed
    assert [e.output.finished for e in streamed if e.output] == [False] * (len(streamed) - 1) + [
        True
    ]
    text = "".join(e.output.text for e in streamed if e.output)
    assert text == sync.output.text, (text, sync.output.text)  # greedy both ways
    scored = Completion.create(
        model=model,
        prompt=PROMPT,
        max_new_tokens=6,
        temperature=0,
        return_token_log_probs=True,
    )
    tokens = scored.output.tokens or []
    assert len(tokens) == scored.output.num_completion_tokens, scored
    assert all(t.log_prob <= 0 for t in tokens) and scored.output.text == text
    try:
        Completion.create(model="no/such-model", prompt=PROMPT, max_new_tokens=2)
        raise AssertionError("a model that does not exist answered")
    except NotFoundError:
        pass
    try:
        Completion.create(
            model=model, prompt=PROMPT, max_new_tokens=2, include_stop_str_in_output=True
        )
        raise AssertionError("include_stop_str_in_output was taken")
    except BadRequestError as exc:
        assert "include_stop_str_in_output" in str(exc)
    return {"text": sync.output.text, "events": len(streamed), "tokens": len(tokens)}


def batch(url: str, key: str, model: str) -> dict[str, Any]:
    prompts = ["Question 1: what is a blorp?", "A blorp is"]
    job_id = Completion.batch_create(
        output_data_path="s3://bucket/out.json",
        model_config=CreateBatchCompletionsModelConfig(model=model, labels={}),
        content=CreateBatchCompletionsV1RequestContent(
            prompts=prompts, max_new_tokens=4, temperature=0
        ),
    ).job_id
    deadline = time.monotonic() + 180
    while True:  # LLM Engine's client has no v1 getter: the batch is OpenAI's
        found = requests.get(f"{url}/v1/batches/{job_id}", headers={"x-api-key": key}, timeout=10)
        assert found.status_code == 200, found.text
        state = found.json()
        if state["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["status"] == "completed", state
    lines = [json.loads(x) for x in File.download(state["output_file_id"]).content.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == ["prompt-0", "prompt-1"], lines
    assert all(x["response"]["status_code"] == 200 for x in lines), lines
    return {"job": job_id, "outputs": len(lines)}


SCHEMA = {  # bounded, so that a tiny model's output ends within max_new_tokens
    "type": "object",
    "properties": {"n": {"enum": [1, 2, 3]}},
    "required": ["n"],
    "additionalProperties": False,
}


def guided(model: str) -> dict[str, str]:
    """Each guided mode, its output checked against the constraint."""
    modes: dict[str, Any] = {
        "guided_choice": ["yes", "no"],
        "guided_regex": r"[0-9]{3}",
        "guided_json": SCHEMA,
        "guided_grammar": 'root ::= "red" | "green" | "blue"',
    }
    seen: dict[str, str] = {}
    for name, constraint in modes.items():
        seen[name] = Completion.create(
            model=model,
            prompt=PROMPT,
            max_new_tokens=48,
            temperature=0,
            **{name: constraint},
        ).output.text
    assert seen["guided_choice"] in ("yes", "no"), seen
    assert re.fullmatch(r"[0-9]{3}", seen["guided_regex"]), seen
    try:
        parsed = json.loads(seen["guided_json"])
    except json.JSONDecodeError as exc:
        raise AssertionError(f"guided_json: {exc}: {seen}") from None
    assert set(parsed) == {"n"} and parsed["n"] in (1, 2, 3), seen
    assert seen["guided_grammar"] in ("red", "green", "blue"), seen
    return seen


def main(url: str, key: str, model: str) -> dict[str, Any]:
    os.environ["LLM_ENGINE_BASE_PATH"] = f"{url}/llm-engine/"
    os.environ["SCALE_API_KEY"] = key
    with tempfile.TemporaryDirectory() as folder:
        uploaded = files(Path(folder))
    tuned = fine_tunes(model, uploaded["id"])
    return {
        "files": uploaded,
        "fine_tune": tuned,
        "models": models(tuned["model"]),
        "completions": completions(tuned["model"]),
        "batch": batch(url, key, model),
        "guided": guided(model),
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
