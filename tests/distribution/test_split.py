"""distributions/split.yaml for real: a front server whose files, datasets and jobs are another
llama-post's (`remote::llama-post`), both on loopback, with the tiny model.

The happy path with the openai SDK runs in the conformance suite (`split-over-a-trainer`); here:
the archive a job's checkpoint downloads as, the trainer killed mid-job and the front restarted,
a remote of another API version, and archives that are not checkpoints.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import signal
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import TINY, Server, distribution, parse_sse, wait_for_job
from tests.tiny import build_tiny_adapter, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    {"prompt": f"Question {i}: what is a blorp?", "completion": "A small fish."} for i in range(16)
]


@dataclass
class Split:
    trainer: Server
    front: Server
    home: Path  # the front's

    @property
    def imported(self) -> Path:
        return self.home / "checkpoints" / "imported"


def front_server(home: Path, model: Path, trainer_url: str) -> Server:
    raw = yaml.safe_load((ROOT / "distributions" / "split.yaml").read_text())
    raw["models"] = [{"model_id": TINY, "source": {"type": "huggingface", "path": str(model)}}]
    env = {
        "LLAMA_POST_HOME": str(home),
        "LLAMA_POST_MODEL_DIR": str(model.parent),
        "LLAMA_POST_DTYPE": "float32",
        "TRAINER_URL": trainer_url,
        "TRAINER_POLL_SECONDS": "0.5",
    }
    (home / "front").mkdir(parents=True, exist_ok=True)
    return Server(raw, home / "front", env)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Iterator[Split]:
    home = tmp_path_factory.mktemp("split")
    model = build_tiny_model(home / "models" / "tiny", tokenizer, heads=2)
    (home / "trainer").mkdir()
    # archives it imports (adapters a front pushes) go where its inference reads checkpoints
    imported = str(home / "trainer" / "checkpoints" / "imported")
    trainer = Server(
        distribution(home / "trainer", model, imported_models_dir=imported), home / "trainer"
    )
    front: Server | None = None
    try:
        trainer.start(timeout=120)  # it picks its port, which the front is told
        front = front_server(home, model, trainer.url).start(timeout=120)
        yield Split(trainer, front, home)
    finally:
        for server in (front, trainer):
            if server is not None and server.proc is not None:
                server.stop(signal.SIGKILL if server.proc.poll() is None else signal.SIGTERM)


def start_job(front: str, epochs: int = 1) -> str:
    dataset_id = f"split-{uuid.uuid4().hex[:6]}"
    made = httpx.post(
        f"{front}/v1/datasets",
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
            "n_epochs": epochs,
            # a two-epoch job runs long enough (32 steps) to be cancelled or cut off while it runs,
            # also when its forked worker starts at once
            "max_steps_per_epoch": 2 if epochs == 1 else 16,
            "data_config": {"dataset_id": dataset_id, "batch_size": 1},
            "seed": 0,
        },
        "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
    }
    job = httpx.post(f"{front}/v1/post-training/supervised-fine-tune", json=body, timeout=60)
    assert job.status_code == 200, job.text
    job_uuid: str = job.json()["job_uuid"]
    return job_uuid


def chat(front: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "A blorp?"}], "max_tokens": 4}
    return httpx.post(f"{front}/v1/chat/completions", json=body, timeout=60)


def test_a_finished_job_is_served_on_the_front_from_its_archive(split: Split) -> None:
    front = split.front.url
    job_uuid = start_job(front)
    status = wait_for_job(split.front, job_uuid)
    assert status["status"] == "completed" and status["fine_tuned_model"] == f"ft/{job_uuid}"
    assert status["provider_id"] == "peft"  # the trainer's provider ran it

    # the front's model is its own copy, unpacked from the trainer's archive
    record = httpx.get(f"{front}/v1/models/ft/{job_uuid}").json()
    assert record["kind"] == "adapter" and record["base_model"] == TINY
    assert record["metadata"]["archive"]["url"].startswith(split.trainer.url)
    assert Path(record["source"]["path"]).is_relative_to(split.imported)
    assert chat(front, f"ft/{job_uuid}").status_code == 200

    # logs, metrics and events read through (the events replay the job to its end)
    base = f"{front}/v1/post-training/jobs/{job_uuid}"
    assert httpx.get(f"{base}/logs").json()["lines"]
    assert [m["step"] for m in httpx.get(f"{base}/metrics").json()["data"]] == [1, 2]
    events = parse_sse(httpx.get(f"{base}/events", timeout=60).content)
    assert events[-1] == "[DONE]" and events[-2]["status"]["status"] == "completed"

    # the archive route, through the front: a tar.gz whose sha256 and size are in the headers
    final = status["checkpoints"][-1]["checkpoint_id"]
    archive = httpx.get(f"{front}/v1/post-training/jobs/{job_uuid}/checkpoints/{final}/archive")
    assert archive.status_code == 200, archive.text
    assert archive.headers["x-llama-post-sha256"] == hashlib.sha256(archive.content).hexdigest()
    assert int(archive.headers["content-length"]) == len(archive.content)
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert f"{job_uuid}-{final}/adapter_config.json" in names
    missing = httpx.get(f"{front}/v1/post-training/jobs/{job_uuid}/checkpoints/step-999999/archive")
    assert missing.status_code == 404

    # the same archive, uploaded through the front's Files API, registers as another model
    uploaded = httpx.post(
        f"{front}/v1/files",
        files={"file": ("ckpt.tar.gz", archive.content)},
        data={"purpose": "user_data"},
    )
    assert uploaded.status_code == 200, uploaded.text
    copy = httpx.post(
        f"{front}/v1/models",
        json={
            "model_id": "copies/one",
            "source": {"type": "archive", "file_id": uploaded.json()["id"], "base_model": TINY},
        },
        timeout=60,
    )
    assert copy.status_code == 200, copy.text
    assert chat(front, "copies/one").status_code == 200
    assert httpx.delete(f"{front}/v1/models/copies/one").status_code == 200
    elsewhere = {"type": "archive", "url": "http://example.invalid/a.tar.gz", "base_model": TINY}
    refused = httpx.post(f"{front}/v1/models", json={"model_id": "x/y", "source": elsewhere})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "source.url"
    assert split.trainer.url in refused.json()["error"]["message"]  # the one it may fetch from
    assert not (split.imported / "copies").exists()  # its folder goes with it


def test_a_job_is_cancelled_through_the_front(split: Split) -> None:
    job_uuid = start_job(split.front.url, epochs=2)
    cancelled = httpx.post(f"{split.front.url}/v1/post-training/jobs/{job_uuid}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert wait_for_job(split.front, job_uuid)["status"] == "cancelled"
    trainer = httpx.get(f"{split.trainer.url}/v1/post-training/jobs/{job_uuid}").json()
    assert trainer["status"] == "cancelled"  # it was the trainer's job that stopped


def test_the_trainer_going_away_and_the_front_restarting(split: Split, tokenizer: Any) -> None:
    front = split.front.url
    job_uuid = start_job(front, epochs=2)
    wait_for_job(split.front, job_uuid, until=lambda s: s["progress"]["step"] >= 1)

    split.trainer.stop(signal.SIGKILL)  # the trainer box goes away mid-job
    lost = httpx.get(f"{front}/v1/post-training/jobs/{job_uuid}").json()
    assert lost["status"] == "unknown", lost
    assert split.trainer.url in lost["unreachable"] and lost["error"] is None
    assert job_uuid in [
        j["job_uuid"] for j in httpx.get(f"{front}/v1/post-training/jobs").json()["data"]
    ]
    health = httpx.get(f"{front}/v1/health").json()
    assert health["status"] == "Degraded"

    split.trainer.start(timeout=120)  # it comes back (and resumes the job from its checkpoint)
    back = httpx.get(f"{front}/v1/post-training/jobs/{job_uuid}").json()
    assert back["status"] in ("scheduled", "in_progress", "completed"), back
    assert back["unreachable"] is None

    split.front.stop()  # the front restarts while the job runs on
    split.front.start(timeout=120)
    listed = httpx.get(f"{front}/v1/post-training/jobs")
    assert job_uuid in [j["job_uuid"] for j in listed.json()["data"]]
    done = wait_for_job(split.front, job_uuid)
    assert done["status"] == "completed", done
    cut = done["attempts"][0]["ended_because"]
    assert "the server stopped under it" in cut  # the trainer's attempt the kill ended
    assert chat(split.front.url, f"ft/{job_uuid}").status_code == 200


def test_inference_on_the_trainer_through_a_front(split: Split, tmp_path: Path) -> None:
    """A front whose inference is the trainer's (`remote::llama-post` for inference): the same
    models by the same ids, the same greedy answers, streamed too; an adapter registered on the
    front is pushed to the trainer, and unregistered there with it."""
    remote = {"provider_id": "trainer", "provider_type": "remote::llama-post"}
    config = {
        "version": 1,
        "distribution": "test",
        "storage_dir": str(tmp_path / "stack"),
        "providers": {"inference": [{**remote, "config": {"base_url": split.trainer.url}}]},
    }
    front = Server(config, tmp_path).start(timeout=120)
    try:
        theirs = httpx.get(f"{split.trainer.url}/v1/models").json()["data"]
        ours = httpx.get(f"{front.url}/v1/models").json()["data"]
        assert [m["id"] for m in ours] == [m["id"] for m in theirs] and TINY in [
            m["id"] for m in ours
        ]
        assert {m["provider_model_id"] for m in ours} == {m["id"] for m in theirs}
        for model in [m["id"] for m in theirs]:  # the tiny base, and adapters trained there
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "A blorp?"}],
                "max_tokens": 6,
                "temperature": 0,
            }
            here = httpx.post(f"{front.url}/v1/chat/completions", json=body, timeout=60)
            there = httpx.post(f"{split.trainer.url}/v1/chat/completions", json=body, timeout=60)
            assert here.status_code == 200, here.text
            text = here.json()["choices"][0]["message"]["content"]
            assert text == there.json()["choices"][0]["message"]["content"]
        streamed = httpx.post(
            f"{front.url}/v1/chat/completions", json={**body, "model": TINY, "stream": True}
        )
        assert streamed.text.rstrip().endswith("data: [DONE]")
        missing = httpx.post(f"{front.url}/v1/chat/completions", json={**body, "model": "no/such"})
        assert missing.status_code == 404

        # an adapter registered on the front over the remote's base is pushed there
        adapter = build_tiny_adapter(tmp_path / "pushed", split.home / "models" / "tiny", seed=5)
        source = {"type": "adapter", "path": str(adapter), "base_model": TINY}
        made = httpx.post(
            f"{front.url}/v1/models", json={"model_id": "pushed/blorp", "source": source}
        )
        assert made.status_code == 200, made.text
        there = httpx.get(f"{split.trainer.url}/v1/models/pushed/blorp").json()
        assert there["kind"] == "adapter" and there["base_model"] == TINY, there
        asked = {**body, "model": "pushed/blorp"}
        here = httpx.post(f"{front.url}/v1/chat/completions", json=asked, timeout=60)
        direct = httpx.post(f"{split.trainer.url}/v1/chat/completions", json=asked, timeout=60)
        assert here.status_code == 200, here.text
        assert (
            here.json()["choices"][0]["message"]["content"]
            == (direct.json()["choices"][0]["message"]["content"])
        )
        files = httpx.get(f"{split.trainer.url}/v1/files").json()["data"]
        assert not [f for f in files if f["filename"] == "adapter.tar.gz"]  # the upload: gone
        assert httpx.delete(f"{front.url}/v1/models/pushed/blorp").status_code == 200
        assert httpx.get(f"{split.trainer.url}/v1/models/pushed/blorp").status_code == 404
    finally:
        front.stop()


class _OtherVersion(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"version": "0.1.0", "api_version": "000000000000"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_remote_of_another_api_version_is_refused_at_start(tmp_path: Path, split: Split) -> None:
    """An older llama-post (a stdlib server answering its /v1/version) is not called at all."""
    old = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherVersion)
    threading.Thread(target=old.serve_forever, daemon=True).start()
    try:
        model = Path(split.trainer.config).parent / "unused"
        front = front_server(tmp_path, model, f"http://127.0.0.1:{old.server_port}")
        with pytest.raises(RuntimeError) as refused:
            front.start(timeout=120)
    finally:
        old.shutdown()
        old.server_close()  # its listening socket, or a ResourceWarning later
    ours = httpx.get(f"{split.trainer.url}/v1/version").json()["api_version"]
    message = " ".join(str(refused.value).split())  # the CLI wraps its lines
    assert "speaks API version 000000000000" in message and f"speaks {ours}" in message


# -- archives that are not checkpoints ----------------------------------------------------------


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _safetensors(shapes: dict[str, list[int]]) -> bytes:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


CONFIG = json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}).encode()
LAYER = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"
UNFIT = {LAYER.format(0, "A"): [4, 7], LAYER.format(0, "B"): [64, 4]}  # hidden is 64, not 7
DEEP = {LAYER.format(9, "A"): [4, 64], LAYER.format(9, "B"): [64, 4]}  # the tiny has 2 layers

BAD = [
    pytest.param([_file("../evil/adapter_config.json", CONFIG)], "climbs out", id="traversal"),
    pytest.param([_file("/etc/adapter_config.json", CONFIG)], "absolute path", id="absolute"),
    pytest.param(
        [_file("a/adapter_config.json", CONFIG), _link("a/w", "/etc/passwd", tarfile.SYMTYPE)],
        "is a symlink",
        id="symlink",
    ),
    pytest.param(
        [_file("a/adapter_config.json", CONFIG), _link("a/w", "../../x", tarfile.LNKTYPE)],
        "is a hard link",
        id="hardlink",
    ),
    pytest.param([_file("a/notes.txt", b"hello")], "not a checkpoint", id="no-config"),
    pytest.param(
        [
            _file("a/adapter_config.json", CONFIG),
            _file("a/adapter_model.safetensors", _safetensors(UNFIT)),
        ],
        "does not fit base model",
        id="wrong-width",
    ),
    pytest.param(
        [
            _file("a/adapter_config.json", CONFIG),
            _file("a/adapter_model.safetensors", _safetensors(DEEP)),
        ],
        "it has 2 layers",
        id="wrong-depth",
    ),
    pytest.param(None, "not a readable tar archive", id="not-a-tar"),
]


@pytest.mark.parametrize(("entries", "named"), BAD)
def test_an_archive_that_is_not_a_checkpoint_is_a_400_leaving_nothing(
    split: Split, entries: list[tuple[tarfile.TarInfo, bytes | None]] | None, named: str
) -> None:
    front = split.front.url
    content = b"this is not a tar at all" if entries is None else _tar(entries)
    uploaded = httpx.post(
        f"{front}/v1/files", files={"file": ("bad.tar.gz", content)}, data={"purpose": "user_data"}
    )
    assert uploaded.status_code == 200, uploaded.text
    before = sorted(split.imported.rglob("*")) if split.imported.exists() else []
    refused = httpx.post(
        f"{front}/v1/models",
        json={
            "model_id": "bad/archive",
            "source": {"type": "archive", "file_id": uploaded.json()["id"], "base_model": TINY},
        },
    )
    assert refused.status_code == 400, refused.text
    assert named in refused.json()["error"]["message"]
    after = sorted(split.imported.rglob("*")) if split.imported.exists() else []
    assert after == before  # no partial folder, no model folder
    assert httpx.get(f"{front}/v1/models/bad/archive").status_code == 404
    assert not (Path("/etc/adapter_config.json").exists() or (split.home / "evil").exists())
