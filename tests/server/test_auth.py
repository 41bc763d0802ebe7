"""API keys and owners, on a real server whose keys are made with `llama-post keys create`.

Owner A's files, datasets, jobs and models are not B's to read, list, use, cancel, delete or chat
with: B gets 404, as for what does not exist. An admin key sees everything."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support import TINY, Server, distribution, wait_for_job
from tests.tiny import build_tiny_adapter

ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)]


def _keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llama_post", "keys", *args, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _key(config: Path, owner: str, *flags: str) -> str:
    made = _keys(config, "create", "--owner", owner, *flags)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


class Caller:
    def __init__(self, url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)
        self.key = key

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, **kw)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("auth")
    # datasets may be read from the checkpoint root too, where owners' job folders lie
    readable = {"allowed_dirs": [str(home / "import"), str(home / "checkpoints")]}
    config = distribution(home, tiny_model, datasets=readable) | {"auth": {"enabled": True}}
    server = Server(config, home)
    keys = {
        "alice": _key(server.config, "alice"),
        "bob": _key(server.config, "bob"),
        "root": _key(server.config, "ops", "--admin"),
    }
    server.start(timeout=60)
    callers = {name: Caller(server.url, key) for name, key in keys.items()}
    yield {"server": server, "keys": keys, "home": home, **callers}
    for caller in callers.values():
        caller.http.close()
    server.stop()


def test_every_route_but_health_needs_a_valid_key(served: dict[str, Any]) -> None:
    server: Server = served["server"]
    url = server.url
    assert httpx.get(f"{url}/v1/health").status_code == 200  # for load balancers
    missing = httpx.get(f"{url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert missing.headers["x-should-retry"] == "false"
    malformed = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-123"})
    assert malformed.status_code == 401 and "malformed" in malformed.json()["error"]["message"]
    unknown = httpx.get(f"{url}/v1/models", headers={"X-API-Key": "tml-" + "0" * 60})
    assert unknown.status_code == 401 and "not valid" in unknown.json()["error"]["message"]
    key = served["keys"]["alice"]
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}, {"x-api-key": key}):
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200, headers
    in_query = httpx.get(f"{url}/v1/models", params={"api_key": key})
    assert in_query.status_code == 401 and "query string" in in_query.json()["error"]["message"]
    # the access log shows the request (once its line is written), not the key
    assert key not in server.wait_for_output(r"GET /v1/models\?api_key=<redacted> ")

    # a revoked key stops working at once; `keys list` never shows a key
    spare = _key(server.config, "carol")
    assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": spare}).status_code == 200
    key_id = spare[4:16]
    listed = _keys(server.config, "list")
    assert key_id in listed.stdout and spare not in listed.stdout
    assert _keys(server.config, "revoke", key_id).returncode == 0
    revoked = httpx.get(f"{url}/v1/models", headers={"X-API-Key": spare})
    assert revoked.status_code == 401

    # the openai SDK sends the same key, and gets its own error type without one
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    assert TINY in [m.id for m in client.models.list().data]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_owners_do_not_see_each_others_things(served: dict[str, Any], models_dir: Path) -> None:
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    root: Caller = served["root"]

    # files
    upload = alice.post(
        "/v1/files",
        files={"file": ("rows.jsonl", io.BytesIO(b'{"prompt": "a", "completion": "b"}\n'))},
        data={"purpose": "fine-tune"},
    )
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert bob.get(path).status_code == 404
        assert alice.get(path).status_code == 200
    assert file_id not in [f["id"] for f in bob.get("/v1/files").json()["data"]]
    assert file_id in [f["id"] for f in root.get("/v1/files").json()["data"]]
    assert bob.delete(f"/v1/files/{file_id}").status_code == 404
    from_file = {
        "dataset_id": "bobs",
        "purpose": "instruct",
        "source": {"type": "file", "file_id": file_id},
    }
    stolen = bob.post("/v1/datasets", json=from_file)
    assert stolen.status_code == 404, stolen.text

    # datasets
    made = alice.post(
        "/v1/datasets",
        json={
            "dataset_id": "alices",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    assert bob.get("/v1/datasets/alices").status_code == 404
    assert bob.get("/v1/datasetio/iterrows/alices").status_code == 404
    appended = bob.post("/v1/datasetio/append-rows/alices", json={"rows": ROWS[:1]})
    assert appended.status_code == 404
    assert "alices" not in [d["identifier"] for d in bob.get("/v1/datasets").json()["data"]]
    assert bob.delete("/v1/datasets/alices").status_code == 404
    assert alice.get("/v1/datasetio/iterrows/alices").json()["data"] == ROWS

    # jobs, and the model a job makes
    job = {
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": 1,
            "data_config": {"dataset_id": "alices", "batch_size": 2},
            "optimizer_config": {"lr": 1e-2},
        },
        "algorithm_config": {"type": "LoRA", "rank": 2, "alpha": 4},
    }
    on_her_data = bob.post("/v1/post-training/supervised-fine-tune", json=job)
    assert on_her_data.status_code == 404, on_her_data.text
    assert on_her_data.json()["error"]["param"] == "training_config.data_config.dataset_id"
    created = alice.post("/v1/post-training/supervised-fine-tune", json=job)
    assert created.status_code == 200, created.text
    job_uuid = created.json()["job_uuid"]
    for path in ("", "/logs", "/metrics", "/artifacts", "/events"):
        assert bob.get(f"/v1/post-training/jobs/{job_uuid}{path}").status_code == 404, path
    assert bob.post(f"/v1/post-training/jobs/{job_uuid}/cancel").status_code == 404
    assert bob.get(f"/v1/fine_tuning/jobs/{job_uuid}").status_code == 404
    assert job_uuid not in [j["job_uuid"] for j in bob.get("/v1/post-training/jobs").json()["data"]]
    assert job_uuid not in [j["id"] for j in bob.get("/v1/fine_tuning/jobs").json()["data"]]
    assert job_uuid in [j["job_uuid"] for j in root.get("/v1/post-training/jobs").json()["data"]]
    deadline = time.monotonic() + 180
    while (status := alice.get(f"/v1/post-training/jobs/{job_uuid}").json())["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert status["status"] == "completed", status
    tuned = status["fine_tuned_model"]
    chat = {"model": tuned, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert alice.post("/v1/chat/completions", json=chat).status_code == 200
    assert bob.post("/v1/chat/completions", json=chat).status_code == 404
    assert (
        bob.post(
            "/v1/completions", json={"model": tuned, "prompt": "Hi", "max_tokens": 2}
        ).status_code
        == 404
    )
    assert bob.get(f"/v1/models/{tuned}").status_code == 404
    assert tuned not in [m["id"] for m in bob.get("/v1/models").json()["data"]]
    assert TINY in [m["id"] for m in bob.get("/v1/models").json()["data"]]  # run.yaml's: everyone's
    assert bob.delete(f"/v1/models/{tuned}").status_code == 404

    # models registered through the API
    adapter = build_tiny_adapter(models_dir / "auth-adapter", models_dir / "tiny", seed=5)
    registered = alice.post(
        "/v1/models",
        json={
            "model_id": "alice/adapter",
            "source": {"type": "adapter", "path": str(adapter), "base_model": TINY},
        },
    )
    assert registered.status_code == 200, registered.text
    over_hers = bob.post(
        "/v1/models",
        json={
            "model_id": "bob/adapter",
            "source": {"type": "adapter", "path": str(adapter), "base_model": "alice/adapter"},
        },
    )
    assert over_hers.status_code == 404
    assert bob.get("/v1/models/alice/adapter").status_code == 404
    assert root.get("/v1/models/alice/adapter").status_code == 200
    assert bob.delete("/v1/models/alice/adapter").status_code == 404
    assert alice.delete("/v1/models/alice/adapter").status_code == 200


def test_a_server_beyond_loopback_does_not_start_without_keys(
    tmp_path: Path, tiny_model: Path
) -> None:
    config = distribution(tmp_path, tiny_model)
    config["server"] = {"host": "0.0.0.0", "port": 0}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    started = subprocess.run(
        [sys.executable, "-m", "llama_post", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 2, started.stderr
    assert "binds 0.0.0.0" in started.stderr and "llama-post keys create" in started.stderr


def _finished(caller: Caller, job_uuid: str) -> dict[str, Any]:
    return wait_for_job(caller.http, job_uuid, timeout=180)


def test_checkpoints_are_listed_published_expired_downloaded_and_deleted(
    served: dict[str, Any],
) -> None:
    import tarfile

    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    made = alice.post(
        "/v1/datasets",
        json={
            "dataset_id": "ckpts",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    job = {
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": 2,
            "save_every": 1,
            "data_config": {"dataset_id": "ckpts", "batch_size": 2},
            "optimizer_config": {"lr": 1e-2},
        },
        "algorithm_config": {"type": "LoRA", "rank": 2, "alpha": 4},
    }
    job_uuid = alice.post("/v1/post-training/supervised-fine-tune", json=job).json()["job_uuid"]
    status = _finished(alice, job_uuid)
    assert status["status"] == "completed", status
    base = f"/v1/post-training/jobs/{job_uuid}/checkpoints"
    listed = alice.get(base).json()["data"]
    # inline::peft keeps its resume state in every checkpoint, so each is a training one
    assert [(c["checkpoint_id"], c["type"]) for c in listed] == [
        ("step-000001", "training"),
        ("step-000002", "training"),
    ]
    assert all(c["size_bytes"] > 0 and not c["public"] for c in listed)
    mine = alice.get("/v1/post-training/checkpoints", params={"limit": 1}).json()
    assert mine["total"] >= 2 and len(mine["data"]) == 1
    assert bob.get(base).status_code == 404
    assert bob.get(f"{base}/step-000002").status_code == 404
    assert not [
        c
        for c in bob.get("/v1/post-training/checkpoints").json()["data"]
        if c["post_training_job_id"] == job_uuid
    ]

    # published: every key reads it and chats with its model; only the owner changes it
    tuned = status["fine_tuned_model"]
    chat = {"model": tuned, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert bob.post("/v1/chat/completions", json=chat).status_code == 404
    published = alice.post(f"{base}/step-000002/publish")
    assert published.status_code == 200 and published.json()["public"] is True
    again = alice.post(f"{base}/step-000002/publish")
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    assert bob.get(f"{base}/step-000002").json()["public"] is True
    assert bob.post("/v1/chat/completions", json=chat).status_code == 200
    assert bob.post(f"{base}/step-000002/publish").status_code in (403, 409)
    assert bob.delete(f"{base}/step-000002").status_code == 403
    assert bob.get(f"{base}/step-000001").status_code == 404  # its sibling stays private
    assert alice.delete(f"{base}/step-000002/publish").json()["public"] is False
    assert bob.post("/v1/chat/completions", json=chat).status_code == 404

    # an archive URL needs no key, and holds the checkpoint's files
    url = alice.post(f"{base}/step-000002/archive-url").json()["url"]
    assert bob.post(f"{base}/step-000002/archive-url").status_code == 404
    download = httpx.get(url)
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        names = tar.getnames()
        config = tar.extractfile(f"{job_uuid}-step-000002/adapter_config.json")
        assert config is not None and b"lora_alpha" in config.read()
    assert f"{job_uuid}-step-000002/adapter_model.safetensors" in names
    assert httpx.get(url[:-3] + "abc").status_code == 404  # a forged token

    # a TTL removes it, the job's log says so; deleting the served one unregisters its model
    ttl = alice.http.put(f"{base}/step-000001/ttl", json={"ttl_seconds": 1})
    assert ttl.status_code == 200 and ttl.json()["expires_at"] is not None
    deadline = time.monotonic() + 30
    while alice.get(f"{base}/step-000001").status_code == 200:
        assert time.monotonic() < deadline, "the expired checkpoint was not removed"
        time.sleep(0.5)
    logs = alice.get(f"/v1/post-training/jobs/{job_uuid}/logs").json()["lines"]
    assert "checkpoint step-000001 removed: its TTL expired" in logs
    deleted = alice.delete(f"{base}/step-000002")
    assert deleted.status_code == 200 and deleted.json()["model_removed"] == tuned
    assert alice.get(f"/v1/models/{tuned}").status_code == 404
    assert alice.get(base).json()["data"] == []


def test_llama_stack_client_uses_the_same_keys(served: dict[str, Any]) -> None:
    from tests.compat.envs import client_python, python312

    python = client_python("llama-stack-client-0.7.0", python312())
    script = (
        "import sys, llama_stack_client as l\n"
        "c = l.LlamaStackClient(base_url=sys.argv[1], max_retries=0)\n"
        "try:\n"
        "    print(sorted(m.id for m in c.models.list()))\n"
        "except l.AuthenticationError:\n"
        "    print('401')\n"
    )
    server: Server = served["server"]
    for key, expected in ((served["keys"]["alice"], TINY), ("", "401")):
        env = {"LLAMA_STACK_CLIENT_API_KEY": key} if key else {}
        done = subprocess.run(
            [str(python), "-c", script, server.url],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", **env},
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout, done.stdout


# -- paths: a folder is its owner's, whichever route names it (issue #29) -------------------------

ALICES_FOLDER = "alices-folder"  # her job's checkpoint_dir, under the checkpoint root


def _job(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": TINY,
        "training_config": {
            "n_epochs": 1,
            "max_steps_per_epoch": 2,
            "save_every": 1,
            "data_config": {"dataset_id": dataset_id, "batch_size": 2},
            "optimizer_config": {"lr": 1e-2},
        },
        "algorithm_config": {"type": "LoRA", "rank": 2, "alpha": 4},
        **extra,
    }


def _dataset(caller: Caller, dataset_id: str) -> str:
    made = caller.post(
        "/v1/datasets",
        json={
            "dataset_id": dataset_id,
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    return dataset_id


@pytest.fixture(scope="module")
def bobs_rows(served: dict[str, Any]) -> str:
    """A dataset of Bob's, to start jobs of his own from."""
    return _dataset(served["bob"], "iso-bob")


@pytest.fixture(scope="module")
def alices_job(served: dict[str, Any]) -> dict[str, Any]:
    """One job of Alice's, trained once, its checkpoints in a checkpoint_dir of her naming."""
    alice: Caller = served["alice"]
    _dataset(alice, "iso-alice")
    created = alice.post(
        "/v1/post-training/supervised-fine-tune",
        json=_job("iso-alice", checkpoint_dir=ALICES_FOLDER),
    )
    assert created.status_code == 200, created.text
    job_uuid = created.json()["job_uuid"]
    status = _finished(alice, job_uuid)
    assert status["status"] == "completed", status
    checkpoints = {c["checkpoint_id"]: c for c in status["checkpoints"]}
    return {
        "job_uuid": job_uuid,
        "model": status["fine_tuned_model"],
        "folder": Path(checkpoints["step-000001"]["path"]).parent,
        "step1": checkpoints["step-000001"]["path"],
        "published": f"/v1/post-training/jobs/{job_uuid}/checkpoints/step-000002/publish",
    }


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def _tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_another_owners_checkpoint_folder_is_no_model_source(
    served: dict[str, Any], alices_job: dict[str, Any], models_dir: Path
) -> None:
    """Finding 1: Bob registers no model from Alice's checkpoints, by path, `..` or a link, nor
    through vLLM's adapter route; he is told no more than for a path that names nothing. The
    server's folders are not shown to him."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    step1 = alices_job["step1"]
    climbing = str(models_dir / os.path.relpath(step1, models_dir))  # from a folder he may read
    assert ".." in climbing
    link = models_dir / "bobs-link"
    link.symlink_to(step1, target_is_directory=True)
    try:
        for given in (step1, climbing, str(link)):
            source = {"type": "adapter", "path": given, "base_model": TINY}
            stolen = bob.post("/v1/models", json={"model_id": "bob/stolen", "source": source})
            assert stolen.status_code == 404, (given, stolen.text)
            assert stolen.json()["error"] == {
                **stolen.json()["error"],
                "param": "source.path",
                "message": f"source.path: no dir at {given}",
            }
            hot = bob.post(
                "/v1/load_lora_adapter",
                json={"lora_name": "bob/hot", "lora_path": given, "base_model": TINY},
            )
            assert hot.status_code == 404, (given, hot.text)
            assert hot.json()["error"]["param"] == "lora_path"
        assert bob.post("/v1/chat/completions", json=_chat("bob/stolen")).status_code == 404
        assert bob.post("/v1/chat/completions", json=_chat("bob/hot")).status_code == 404
        # its owner may, by the same paths
        source = {"type": "adapter", "path": str(link), "base_model": TINY}
        hers = alice.post("/v1/models", json={"model_id": "alice/step1", "source": source})
        assert hers.status_code == 200, hers.text
        assert alice.post("/v1/chat/completions", json=_chat("alice/step1")).status_code == 200
        assert alice.delete("/v1/models/alice/step1").status_code == 200
    finally:
        link.unlink()

    # the server's folders (the checkpoint root among them) are an admin's to see
    home = str(served["home"])
    for caller in (bob, alice):
        for path in ("/v1/inspect/providers", "/v1/providers", "/v1/providers/peft"):
            shown = caller.get(path)
            assert shown.status_code == 200 and shown.json(), path
            assert home not in shown.text and str(models_dir) not in shown.text, path
    assert str(served["home"] / "checkpoints") in served["root"].get("/v1/inspect/providers").text


def test_only_its_owner_replaces_a_served_adapter(
    served: dict[str, Any], alices_job: dict[str, Any], models_dir: Path
) -> None:
    """Finding 2: vLLM's `load_inplace` does not replace Alice's model for Bob: her private one
    is not found, her published one is hers alone to change; she goes on chatting with both."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    root: Caller = served["root"]
    hers = build_tiny_adapter(models_dir / "iso-hers", models_dir / "tiny", seed=7)
    his = build_tiny_adapter(models_dir / "iso-his", models_dir / "tiny", seed=8)
    source = {"type": "adapter", "path": str(hers), "base_model": TINY}
    made = alice.post("/v1/models", json={"model_id": "alice/inplace", "source": source})
    assert made.status_code == 200, made.text
    tuned = alices_job["model"]
    assert alice.post(alices_job["published"]).status_code == 200
    try:
        for name, status in (("alice/inplace", 404), (tuned, 403)):
            replaced = bob.post(
                "/v1/load_lora_adapter",
                json={
                    "lora_name": name,
                    "lora_path": str(his),
                    "base_model": TINY,
                    "load_inplace": True,
                },
            )
            assert replaced.status_code == status, (name, replaced.text)
            assert replaced.json()["error"]["param"] == "lora_name"
            kept = alice.get(f"/v1/models/{name}")
            assert kept.status_code == 200 and kept.json()["source"]["path"] != str(his), name
            assert alice.post("/v1/chat/completions", json=_chat(name)).status_code == 200
        # its owner (and an admin) may
        again = {
            "lora_name": "alice/inplace",
            "lora_path": str(his),
            "base_model": TINY,
            "load_inplace": True,
        }
        assert alice.post("/v1/load_lora_adapter", json=again).status_code == 200
        assert alice.get("/v1/models/alice/inplace").json()["source"]["path"] == str(his)
        assert root.post("/v1/load_lora_adapter", json=again).status_code == 200
    finally:
        assert alice.delete(alices_job["published"]).status_code == 200
        root.delete("/v1/models/alice/inplace")


def test_only_its_owner_unloads_or_deletes_a_published_model(
    served: dict[str, Any], alices_job: dict[str, Any]
) -> None:
    """Finding 3: a published model is Bob's to read and chat with, not to unload or delete, by
    any route (vLLM's, the native one, LLM Engine's)."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    tuned = alices_job["model"]
    assert alice.post(alices_job["published"]).status_code == 200
    try:
        assert bob.get(f"/v1/models/{tuned}").status_code == 200
        assert bob.post("/v1/chat/completions", json=_chat(tuned)).status_code == 200
        unloaded = bob.post("/v1/unload_lora_adapter", json={"lora_name": tuned})
        assert unloaded.status_code == 403, unloaded.text
        assert unloaded.json()["error"]["param"] == "lora_name"
        deleted = bob.delete(f"/v1/models/{tuned}")
        assert deleted.status_code == 403, deleted.text
        endpoint = bob.delete(f"/llm-engine/v1/llm/model-endpoints/{tuned}")
        assert endpoint.status_code == 403, endpoint.text
        assert "only its owner" in endpoint.json()["detail"]
        assert alice.get(f"/v1/models/{tuned}").status_code == 200
        assert alice.post("/v1/chat/completions", json=_chat(tuned)).status_code == 200
    finally:
        assert alice.delete(alices_job["published"]).status_code == 200
    # unpublished, it is not found again
    assert bob.post("/v1/unload_lora_adapter", json={"lora_name": tuned}).status_code == 404


def test_a_job_does_not_resume_from_another_owners_checkpoints(
    served: dict[str, Any], alices_job: dict[str, Any], bobs_rows: str
) -> None:
    """Finding 4: Bob's job cannot take Alice's checkpoint folder (by name, through `..`, below
    it, or as the default folder of a job_uuid of that name): it would resume from her weights
    and optimizer state, rewrite her checkpoints and list them as its own."""
    bob: Caller = served["bob"]
    root: Caller = served["root"]
    folder: Path = alices_job["folder"]
    before = _tree(folder)
    for given in (ALICES_FOLDER, f"elsewhere/../{ALICES_FOLDER}", f"{ALICES_FOLDER}/more"):
        taken = bob.post(
            "/v1/post-training/supervised-fine-tune",
            json=_job(bobs_rows, checkpoint_dir=given),
        )
        assert taken.status_code == 400, (given, taken.text)
        error = taken.json()["error"]
        assert error["param"] == "checkpoint_dir"
        assert (
            alices_job["job_uuid"] not in error["message"] and str(folder) not in error["message"]
        )
    as_id = bob.post(
        "/v1/post-training/supervised-fine-tune", json=_job(bobs_rows, job_uuid=ALICES_FOLDER)
    )
    assert as_id.status_code == 400, as_id.text
    assert as_id.json()["error"]["param"] == "job_uuid"
    assert _tree(folder) == before
    mine = bob.get("/v1/post-training/checkpoints").json()["data"]
    assert not [c for c in mine if c["path"].startswith(str(folder))]
    # a folder of his own is his; an admin may name any
    preflight = "/v1/post-training/preflight"
    assert (
        bob.post(preflight, json=_job(bobs_rows, checkpoint_dir="bobs-folder")).status_code == 200
    )
    assert (
        root.post(preflight, json=_job(bobs_rows, checkpoint_dir=ALICES_FOLDER)).status_code == 200
    )


def test_a_tracker_does_not_write_into_another_owners_folders(
    served: dict[str, Any], alices_job: dict[str, Any], bobs_rows: str
) -> None:
    """Finding 5: a tracker's folder of Bob's job is not in Alice's checkpoint folder nor in her
    job's own folder (the provider's storage_dir/jobs/<job>), by either path."""
    bob: Caller = served["bob"]
    folder: Path = alices_job["folder"]
    job_folder = f"jobs/{alices_job['job_uuid']}/tensorboard"
    before = _tree(folder)
    for given in (str(folder / "tb"), job_folder, f"../checkpoints/{ALICES_FOLDER}"):
        trackers = {"trackers": [{"type": "tensorboard", "log_dir": given}]}
        refused = bob.post(
            "/v1/post-training/supervised-fine-tune",
            json=_job(bobs_rows, logger_config=trackers),
        )
        assert refused.status_code == 400, (given, refused.text)
        assert refused.json()["error"]["param"] == "logger_config.trackers[0].log_dir"
    assert _tree(folder) == before
    own = {"trackers": [{"type": "tensorboard", "log_dir": "bobs-tensorboard"}]}
    checked = bob.post("/v1/post-training/preflight", json=_job(bobs_rows, logger_config=own))
    assert checked.status_code == 200, checked.text


def test_a_path_the_os_refuses_is_a_400_naming_its_field(
    served: dict[str, Any], models_dir: Path, bobs_rows: str
) -> None:
    """Finding 9: a name too long for the file system (in a folder the server reads), or holding
    a NUL byte, is the client's mistake: 400 naming the field, never a 500."""
    bob: Caller = served["bob"]
    long = str(models_dir / ("a" * 300))
    loaded = bob.post("/v1/load_lora_adapter", json={"lora_name": "bob/long", "lora_path": long})
    assert loaded.status_code == 400, loaded.text
    assert loaded.json()["error"]["param"] == "lora_path"
    source = {"type": "adapter", "path": long, "base_model": TINY}
    registered = bob.post("/v1/models", json={"model_id": "bob/long", "source": source})
    assert registered.status_code == 400, registered.text
    assert registered.json()["error"]["param"] == "source.path"
    for given in ("a" * 300, "bad\x00name"):
        job = bob.post(
            "/v1/post-training/supervised-fine-tune",
            json=_job(bobs_rows, checkpoint_dir=given),
        )
        assert job.status_code == 400, job.text
        assert job.json()["error"]["param"] == "checkpoint_dir"
        trackers = {"trackers": [{"type": "tensorboard", "log_dir": given}]}
        tracked = bob.post(
            "/v1/post-training/supervised-fine-tune",
            json=_job(bobs_rows, logger_config=trackers),
        )
        assert tracked.status_code == 400, tracked.text
        assert tracked.json()["error"]["param"] == "logger_config.trackers[0].log_dir"


def test_file_pages_are_cut_from_what_the_caller_sees(served: dict[str, Any]) -> None:
    """A page holds `limit` of the caller's files, its cursors are theirs, and another owner's
    file id as `after` is answered as one that does not exist."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]

    def upload(caller: Caller, name: str) -> str:
        made = caller.post(
            "/v1/files",
            files={"file": (name, io.BytesIO(b"{}\n"))},
            data={"purpose": "evals"},
        )
        assert made.status_code == 200, made.text
        return str(made.json()["id"])

    bobs = [upload(bob, "b1.jsonl")]
    hers = [upload(alice, f"a{i}.jsonl") for i in range(3)]
    bobs.append(upload(bob, "b2.jsonl"))

    seen: list[str] = []
    params = {"purpose": "evals", "limit": 1}
    while True:
        page = bob.get("/v1/files", params=params).json()
        assert not {page["first_id"], page["last_id"]} & set(hers), page
        assert len(page["data"]) == 1, page  # never short: filtering is done before the cut
        seen.append(page["data"][0]["id"])
        assert page["first_id"] == page["last_id"] == seen[-1]
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    assert set(bobs) <= set(seen) and not set(hers) & set(seen)
    assert seen.index(bobs[1]) < seen.index(bobs[0])  # newest first

    # another owner's id as the cursor: the same 404 as an id that names nothing
    hidden = bob.get("/v1/files", params={"after": hers[0]})
    missing_id = "file-" + "0" * 24
    missing = bob.get("/v1/files", params={"after": missing_id})
    assert hidden.status_code == missing.status_code == 404
    for answer, named in ((hidden, hers[0]), (missing, missing_id)):
        error = answer.json()["error"]
        error.pop("request_id")
        error["message"] = error["message"].replace(named, "<id>")
        assert error == {
            "message": "after: no file '<id>'",
            "type": "not_found_error",
            "param": "after",
            "code": "404",
            "details": [],
        }
    assert alice.get("/v1/files", params={"after": hers[0]}).status_code == 200


def test_conflicts_name_nothing_of_another_owner(served: dict[str, Any], models_dir: Path) -> None:
    """Ids are one namespace: a taken one is a 409 for everyone, saying only the id the caller
    sent; a model that others' adapters hold is a 409 that names only the caller's own."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    dataset = {"dataset_id": "alices-taken", "purpose": "instruct"}
    made = alice.post("/v1/datasets", json=dataset | {"source": {"type": "rows", "rows": ROWS}})
    assert made.status_code == 200, made.text
    answers = [
        caller.post("/v1/datasets", json=dataset | {"source": {"type": "rows", "rows": ROWS}})
        for caller in (alice, bob)
    ]
    bodies = [a.json()["error"] | {"request_id": None} for a in answers]
    assert [a.status_code for a in answers] == [409, 409] and bodies[0] == bodies[1], bodies

    adapter = build_tiny_adapter(models_dir / "auth-held-adapter", models_dir / "tiny", seed=6)
    held = alice.post(
        "/v1/models",
        json={
            "model_id": "alice/holds-the-base",
            "source": {"type": "adapter", "path": str(adapter), "base_model": TINY},
        },
    )
    assert held.status_code == 200, held.text
    try:
        refused = bob.delete(f"/v1/models/{TINY}")
        assert refused.status_code in (403, 404, 409), refused.text
        assert "alice" not in refused.text and "holds-the-base" not in refused.text, refused.text
        if refused.status_code == 409:
            assert "adapters of other owners" in refused.json()["error"]["message"]
        hers = alice.delete(f"/v1/models/{TINY}")
        assert hers.status_code == 409 and "alice/holds-the-base" in hers.json()["error"]["message"]
    finally:
        assert alice.delete("/v1/models/alice/holds-the-base").status_code == 200
    assert TINY in [m["id"] for m in bob.get("/v1/models").json()["data"]]


def _as_missing(response: httpx.Response, id: str) -> tuple[int, dict[str, Any]]:
    """A refusal with the id it names blanked out: what tells one refusal from another."""
    error = response.json()["error"] | {"request_id": None}
    error["message"] = error["message"].replace(id, "<id>")
    return response.status_code, error


def test_another_owners_id_is_answered_as_an_id_that_names_nothing(
    served: dict[str, Any], models_dir: Path
) -> None:
    """Whether an id is taken by another owner cannot be read from a refusal: B's answer for A's
    id is the same, word for word, as for an id no one has."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    upload = alice.post(
        "/v1/files",
        files={"file": ("rows.jsonl", io.BytesIO(b'{"prompt": "a", "completion": "b"}\n'))},
        data={"purpose": "fine-tune"},
    )
    file_id = upload.json()["id"]
    dataset = {"dataset_id": "alices-quiet", "purpose": "instruct"}
    made = alice.post("/v1/datasets", json=dataset | {"source": {"type": "rows", "rows": ROWS}})
    assert made.status_code == 200, made.text
    adapter = build_tiny_adapter(models_dir / "auth-quiet-adapter", models_dir / "tiny", seed=7)
    source = {"type": "adapter", "path": str(adapter), "base_model": TINY}
    model = alice.post("/v1/models", json={"model_id": "alice/quiet", "source": source})
    assert model.status_code == 200, model.text

    def job_on(dataset_id: str) -> dict[str, Any]:
        return {
            "model": TINY,
            "training_config": {
                "n_epochs": 1,
                "max_steps_per_epoch": 1,
                "data_config": {"dataset_id": dataset_id, "batch_size": 2},
            },
            "algorithm_config": {"type": "LoRA", "rank": 2, "alpha": 4},
        }

    created = alice.post("/v1/post-training/supervised-fine-tune", json=job_on("alices-quiet"))
    assert created.status_code == 200, created.text
    job_uuid = created.json()["job_uuid"]
    nobodys = {
        file_id: "file-" + "0" * (len(file_id) - 5),
        "alices-quiet": "nobodys-quiet",
        "alice/quiet": "nobody/quiet",
        job_uuid: "0" * 8 + job_uuid[8:],
    }
    probes: list[tuple[str, str, str, dict[str, Any] | None]] = [
        (file_id, "GET", "/v1/files/{}", None),
        (file_id, "GET", "/v1/files/{}/content", None),
        (file_id, "DELETE", "/v1/files/{}", None),
        (
            file_id,
            "POST",
            "/v1/datasets",
            {
                "dataset_id": "bobs-quiet",
                "purpose": "instruct",
                "source": {"type": "file", "file_id": "{}"},
            },
        ),
        ("alices-quiet", "GET", "/v1/datasets/{}", None),
        ("alices-quiet", "GET", "/v1/datasetio/iterrows/{}", None),
        ("alices-quiet", "POST", "/v1/datasetio/append-rows/{}", {"rows": ROWS[:1]}),
        ("alices-quiet", "DELETE", "/v1/datasets/{}", None),
        (
            "alices-quiet",
            "POST",
            "/v1/post-training/supervised-fine-tune",
            job_on("{}"),
        ),
        ("alice/quiet", "GET", "/v1/models/{}", None),
        ("alice/quiet", "DELETE", "/v1/models/{}", None),
        (
            "alice/quiet",
            "POST",
            "/v1/chat/completions",
            {"model": "{}", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        ),
        (
            "alice/quiet",
            "POST",
            "/v1/completions",
            {"model": "{}", "prompt": "Hi", "max_tokens": 2},
        ),
        ("alice/quiet", "POST", "/v1/unload_lora_adapter", {"lora_name": "{}"}),
        (job_uuid, "GET", "/v1/post-training/jobs/{}", None),
        (job_uuid, "GET", "/v1/post-training/jobs/{}/logs", None),
        (job_uuid, "POST", "/v1/post-training/jobs/{}/cancel", None),
        (job_uuid, "GET", "/v1/fine_tuning/jobs/{}", None),
        (job_uuid, "GET", "/v1/fine_tuning/jobs/{}/events", None),
    ]
    try:
        for id, method, path, body in probes:
            answers = []
            for asked in (id, nobodys[id]):
                filled = yaml.safe_load(yaml.safe_dump(body).replace("'{}'", repr(asked)))
                answer = bob.http.request(
                    method, path.format(asked), json=filled if body is not None else None
                )
                answers.append(_as_missing(answer, asked))
            assert answers[0][0] == 404 and answers[0] == answers[1], (method, path, answers)
    finally:
        _finished(alice, job_uuid)
        assert alice.delete("/v1/models/alice/quiet").status_code == 200


def test_a_base_model_is_chosen_among_those_the_caller_may_use(
    served: dict[str, Any], models_dir: Path, tiny_model: Path
) -> None:
    """vLLM's `load_lora_adapter` without `base_model` takes the only base served; another
    owner's bases are neither counted nor named."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    second = alice.post(
        "/v1/models",
        json={
            "model_id": "alice/second-base",
            "source": {"type": "huggingface", "path": str(tiny_model)},
        },
    )
    assert second.status_code == 200, second.text
    adapter = build_tiny_adapter(models_dir / "auth-base-choice", models_dir / "tiny", seed=8)
    try:
        his = bob.post(
            "/v1/load_lora_adapter", json={"lora_name": "bob/choice", "lora_path": str(adapter)}
        )
        assert his.status_code == 200, his.text
        assert his.json()["base_model"] == TINY
        hers = alice.post(
            "/v1/load_lora_adapter", json={"lora_name": "alice/choice", "lora_path": str(adapter)}
        )
        assert hers.status_code == 400, hers.text
        assert "alice/second-base" in hers.json()["error"]["message"]
    finally:
        for caller, name in (
            (bob, "bob/choice"),
            (alice, "alice/choice"),
            (alice, "alice/second-base"),
        ):
            caller.delete(f"/v1/models/{name}")


def test_model_records_show_server_folders_to_their_maker_alone(
    served: dict[str, Any], alices_job: dict[str, Any]
) -> None:
    """A model record's folders (`source.path`, `weights`) are the server's: its maker and an
    admin read them; a key that may only use the model (published, or run.yaml's) reads
    `(hidden)`, as `/v1/inspect/providers` shows it the server's folders."""
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    root: Caller = served["root"]
    tuned = alices_job["model"]
    assert alice.post(alices_job["published"]).status_code == 200
    try:
        for caller, shown in ((alice, True), (root, True), (bob, False)):
            record = caller.get(f"/v1/models/{tuned}").json()
            listed = next(m for m in caller.get("/v1/models").json()["data"] if m["id"] == tuned)
            for seen in (record, listed):
                folders = [seen["source"]["path"], *(seen["weights"] or {}).values()]
                hidden = [f for f in folders if f is not None and f == "(hidden)"]
                assert (not hidden) is shown and (len(hidden) >= 2) is not shown, (caller, seen)
                if shown:
                    assert str(alices_job["folder"]) in seen["source"]["path"], seen
        base = bob.get(f"/v1/models/{TINY}").json()  # run.yaml's: no one made it
        assert base["source"]["path"] == "(hidden)" and base["weights"]["path"] == "(hidden)"
        assert root.get(f"/v1/models/{TINY}").json()["source"]["path"] != "(hidden)"
    finally:
        assert alice.delete(alices_job["published"]).status_code == 200


def test_the_login_form_is_read_no_further_than_its_limit(served: dict[str, Any]) -> None:
    url = served["server"].url
    huge = b"key=" + b"x" * (1 << 20)
    answer = httpx.post(
        f"{url}/ui/login",
        content=huge,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413, answer.status_code

    def chunks() -> Iterator[bytes]:
        yield b"key="
        for _ in range(64):
            yield b"x" * (1 << 14)

    streamed = httpx.post(
        f"{url}/ui/login",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert streamed.status_code == 413, streamed.status_code
    wrong = httpx.post(f"{url}/ui/login", data={"key": "not-a-key"})
    assert wrong.status_code == 401
    right = httpx.post(f"{url}/ui/login", data={"key": served["keys"]["bob"]})
    assert right.status_code == 303 and "llama_post" in right.headers.get("set-cookie", "")


def test_a_dataset_is_not_read_from_another_owners_job_folder(
    served: dict[str, Any], alices_job: dict[str, Any]
) -> None:
    alice: Caller = served["alice"]
    bob: Caller = served["bob"]
    hers = Path(alices_job["step1"]) / "adapter_config.json"
    assert hers.is_file()
    answers = {}
    for name, path in (("hers", hers), ("none", hers.with_name("nothing.json"))):
        uri = hers.as_uri() if name == "hers" else path.as_uri()
        body = {
            "dataset_id": f"bob-reads-{name}",
            "purpose": "instruct",
            "source": {"type": "uri", "uri": uri, "format": "json"},
        }
        answered = bob.post("/v1/datasets", json=body)
        answers[name] = _as_missing(answered, str(path if name == "none" else hers))
    assert answers["hers"][0] == 404 and answers["hers"] == answers["none"], answers
    body = {
        "dataset_id": "alice-reads-hers",
        "purpose": "instruct",
        "source": {"type": "uri", "uri": hers.as_uri(), "format": "json"},
    }
    own = alice.post("/v1/datasets", json=body)
    assert own.status_code != 404, own.text  # hers to read (its rows are not a dataset's)
