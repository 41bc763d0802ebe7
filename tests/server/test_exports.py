"""Merge and export jobs on the tiny model, over one server for the module: a LoRA job's adapter
merged into its base answers as the adapter served unmerged does, token for token; its GGUF
export read back through transformers' GGUF reader (the inference provider's `gguf` source)
answers the same; quantized exports are GGUF files whose tensors have the types asked for. Keys
are on: another owner sees none of it."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.utils.gguf_export import llama_cpp_pre, write_gguf
from tests.server.test_auth import _key
from tests.support import TINY, Server, distribution, wait_for_job

ROWS = [
    {"prompt": f"Question {i}: what is a blorp?", "completion": "A blorp is a small blue fish."}
    for i in range(8)
]
PROMPTS = ["Question 1: what is a blorp?", "The blorp", "Once upon a time"]
JOB = "export-source"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[dict[str, httpx.Client]]:
    """A server with alice's finished LoRA job (`ft/export-source`) to merge and export, and a
    client for alice and one for bob."""
    home = tmp_path_factory.mktemp("exports")
    server = Server(distribution(home, tiny_model) | {"auth": {"enabled": True}}, home)
    clients = {
        name: httpx.Client(
            base_url="http://unused",
            headers={"Authorization": f"Bearer {_key(server.config, name)}"},
            timeout=60,
        )
        for name in ("alice", "bob")
    }
    server.start()
    for client in clients.values():
        client.base_url = httpx.URL(server.url)
    client = clients["alice"]
    try:
        rows = {"type": "rows", "rows": ROWS}
        made = client.post(
            "/v1/datasets", json={"dataset_id": "blorps", "purpose": "instruct", "source": rows}
        )
        assert made.status_code == 200, made.text
        body = {
            "job_uuid": JOB,
            "model": TINY,
            "training_config": {
                "n_epochs": 2,
                "data_config": {"dataset_id": "blorps", "batch_size": 4},
                "optimizer_config": {"lr": 2e-2},
            },
            "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
        }
        made = client.post("/v1/post-training/supervised-fine-tune", json=body)
        assert made.status_code == 200, made.text
        assert wait_for_job(client, JOB)["status"] == "completed"
        yield clients
    finally:
        for each in clients.values():
            each.close()
        server.stop()


@pytest.fixture(scope="module")
def http(served: dict[str, httpx.Client]) -> httpx.Client:
    return served["alice"]


def finished(http: httpx.Client, export_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"/v1/post-training/exports/{export_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            assert job["status"] == "completed", job
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def greedy(http: httpx.Client, model: str, prompt: str) -> list[str]:
    answer = http.post(
        "/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 1},
    )
    assert answer.status_code == 200, answer.text
    tokens: list[str] = answer.json()["choices"][0]["logprobs"]["tokens"]
    return tokens


def test_a_merged_adapter_answers_as_the_adapter_does(http: httpx.Client) -> None:
    body = {"model": f"ft/{JOB}", "export_id": "merge-ft"}
    made = http.post("/v1/post-training/merge", json=body)
    assert made.status_code == 200, made.text
    assert made.json()["model_id"] == "merged/merge-ft"
    job = finished(http, "merge-ft")
    merged = http.get("/v1/models/merged/merge-ft").json()
    assert merged["kind"] == "base" and merged["has_chat_template"]
    for prompt in PROMPTS:
        assert greedy(http, "merged/merge-ft", prompt) == greedy(http, f"ft/{JOB}", prompt)
    assert greedy(http, TINY, PROMPTS[0]) != greedy(http, f"ft/{JOB}", PROMPTS[0])  # it learnt

    download = http.get("/v1/post-training/exports/merge-ft/download")
    assert download.status_code == 200
    # LLM Engine's Model.download of the merged model: a URL that needs no key
    urls = http.post(
        "/llm-engine/v1/llm/model-endpoints/download", json={"model_name": "merged/merge-ft"}
    ).json()["urls"]
    assert list(urls) == ["merge-ft.tar.gz"]
    assert httpx.get(urls["merge-ft.tar.gz"]).content == download.content
    assert hashlib.sha256(download.content).hexdigest() == download.headers["x-llama-post-sha256"]
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= names
    assert job["filename"] == "merge-ft.tar.gz" and job["size_bytes"] > 0


def test_a_models_page_offers_a_download_per_format(http: httpx.Client) -> None:
    page = http.get(f"/ui/models/ft/{JOB}").text
    assert 'data-kind="merge"' in page  # an adapter: merged weights too
    for outtype in ("f16", "q8_0", "q4_0"):
        assert f'data-outtype="{outtype}"' in page
    assert 'data-kind="merge"' not in http.get(f"/ui/models/{TINY}").text


def test_the_f16_gguf_reads_back_through_transformers_with_the_same_answers(
    http: httpx.Client,
) -> None:
    made = http.post(
        "/v1/post-training/export",
        json={"model": "merged/merge-ft", "outtype": "f16", "export_id": "gguf-f16"},
    )
    assert made.status_code == 200, made.text
    job = finished(http, "gguf-f16")
    assert job["filename"] == "merged-merge-ft-f16.gguf"
    download = http.get("/v1/post-training/exports/gguf-f16/download")
    assert hashlib.sha256(download.content).hexdigest() == job["sha256"]
    assert download.content[:4] == b"GGUF"
    registered = http.post(
        "/v1/models",
        json={"model_id": "gguf/f16", "source": {"type": "gguf", "path": job["path"]}},
    )
    assert registered.status_code == 200, registered.text
    for prompt in PROMPTS:
        assert greedy(http, "gguf/f16", prompt) == greedy(http, f"ft/{JOB}", prompt)


def test_quantized_exports_hold_the_types_asked_for(http: httpx.Client, tmp_path: Path) -> None:
    checkpoint = http.get(f"/v1/post-training/jobs/{JOB}").json()["checkpoints"][-1]["identifier"]
    made = http.post(  # from a job's checkpoint: its adapter merged first
        "/v1/post-training/export",
        json={"checkpoint": checkpoint, "outtype": "q8_0", "export_id": "gguf-q8_0"},
    )
    assert made.status_code == 200, made.text
    job = finished(http, "gguf-q8_0")
    assert job["filename"] == f"{checkpoint.replace('/', '-')}-q8_0.gguf"
    holds_types(Path(job["path"]), "Q8_0", "Q8_0")
    # the other types written in this process from the merged folder, as the worker writes
    # them; llama.cpp's quantizer keeps a 4-bit file's embedding (here the head too) at 8 bits
    merged = Path(http.get("/v1/models/merged/merge-ft").json()["weights"]["path"])
    for outtype, layers, embedding in (("q4_0", "Q4_0", "Q8_0"), ("bf16", "BF16", "BF16")):
        write_gguf(merged, tmp_path / f"tiny-{outtype}.gguf", outtype, "tiny")
        holds_types(tmp_path / f"tiny-{outtype}.gguf", layers, embedding)


def holds_types(path: Path, layers: str, embedding: str) -> None:
    """The file's tensors are of these types (norms f32), with the metadata llama.cpp reads."""
    import gguf

    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == layers
    assert types["token_embd.weight"] == embedding
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to the embedding, as in the model
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    # the tiny model's tokenizer, rebuilt by transformers from SmolLM2's GGUF, splits text as
    # GPT-2's does (SmolLM2's own tokenizer.json is "smollm": digits one by one)
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert len(fields["tokenizer.ggml.merges"].data) > 40000


def test_what_cannot_be_merged_or_exported_is_refused_by_name(http: httpx.Client) -> None:
    def refused(route: str, body: dict[str, Any]) -> tuple[int, str | None]:
        answer = http.post(f"/v1/post-training/{route}", json=body)
        return answer.status_code, answer.json()["error"].get("param")

    assert refused("merge", {"model": TINY}) == (400, "model")  # a base: nothing to merge
    assert refused("merge", {}) == (400, "model")
    assert refused("export", {"model": TINY, "checkpoint": f"{JOB}/step-000004"}) == (400, "model")
    assert refused("export", {"model": "nothing/here"})[0] == 404
    assert refused("export", {"checkpoint": f"{JOB}/step-000099"}) == (404, "checkpoint")
    assert refused("export", {"model": TINY, "outtype": "q3_k"})[0] == 422
    assert refused("merge", {"model": f"ft/{JOB}", "model_id": TINY}) == (409, "model_id")
    assert refused("merge", {"model": f"ft/{JOB}", "export_id": JOB}) == (409, "export_id")
    assert http.post("/v1/post-training/exports/nothing-here/cancel").status_code == 404
    listed = [e["export_id"] for e in http.get("/v1/post-training/exports").json()["data"]]
    assert "merge-ft" in listed


def test_a_byte_level_pre_tokenizer_is_named_as_llama_cpp_knows_it() -> None:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    smollm = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, byte_level]}}
    assert llama_cpp_pre(smollm) == "smollm"  # SmolLM2's own tokenizer.json
    assert llama_cpp_pre({"pre_tokenizer": byte_level}) == "gpt-2"
    assert llama_cpp_pre({"pre_tokenizer": {"type": "Metaspace"}}) == "default"


def test_an_export_stops_when_cancelled(http: httpx.Client) -> None:
    made = http.post("/v1/post-training/export", json={"model": TINY, "export_id": "cancelled"})
    assert made.status_code == 200, made.text
    cancelled = http.post("/v1/post-training/exports/cancelled/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert http.post("/v1/post-training/exports/cancelled/cancel").status_code == 409
    assert http.get("/v1/post-training/exports/cancelled/download").status_code == 409
    assert http.post("/v1/post-training/exports/cancelled/download-url").status_code == 409


def test_another_owner_sees_none_of_it(http: httpx.Client, served: dict[str, httpx.Client]) -> None:
    bob = served["bob"]
    merged = http.get("/v1/post-training/exports/merge-ft").json()
    assert bob.get("/v1/post-training/exports/merge-ft").status_code == 404
    assert bob.get("/v1/post-training/exports/merge-ft/download").status_code == 404
    assert bob.post("/v1/post-training/exports/merge-ft/cancel").status_code == 404
    assert bob.post("/v1/post-training/exports/merge-ft/download-url").status_code == 404
    assert bob.get("/v1/post-training/exports").json()["data"] == []
    assert bob.get("/v1/models/merged/merge-ft").status_code == 404  # the merged model is hers
    assert bob.post("/v1/post-training/merge", json={"model": f"ft/{JOB}"}).status_code == 404
    checkpoint = {"checkpoint": f"{JOB}/step-000004"}
    assert bob.post("/v1/post-training/export", json=checkpoint).status_code == 404
    source = {"type": "huggingface", "path": merged["path"]}  # nor is its folder his to serve
    taken = bob.post("/v1/models", json={"model_id": "bob/merged", "source": source})
    assert taken.status_code == 404, taken.text


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (`make test` installs it where it can: as root "
    "with apt-get)",
)
def test_a_browser_downloads_a_gguf_from_a_models_page(http: httpx.Client) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            context = browser.new_context(
                accept_downloads=True,
                extra_http_headers={"Authorization": http.headers["Authorization"]},
            )
            page = context.new_page()
            page.goto(f"{http.base_url}/ui/models/merged/merge-ft")
            with page.expect_download(timeout=240_000) as started:
                page.click('button.export[data-outtype="q8_0"]')
            download = started.value
            assert download.suggested_filename == "merged-merge-ft-q8_0.gguf"
            assert Path(download.path()).read_bytes()[:4] == b"GGUF"
            page.wait_for_selector('#exports[data-state="done"]')
        finally:
            browser.close()
