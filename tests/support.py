"""What the tests share: a distribution in a temporary folder, a real server, and two drivers
that run the same API calls over HTTP and through the library client."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml

from llama_post import LlamaPostClient, LlamaPostError
from llama_post.routes import Route, all_routes
from llama_post.schema import UploadedFile

ROUTES: dict[tuple[str, str], Route] = {(r.api, r.name): r for r in all_routes() if r.primary}


TINY = "tiny/llama"
LISTENING = re.compile(r"Uvicorn running on http://[^:\s]+:(\d+)")


# For a test of the `api` fixture that trains, where the library client would only repeat a
# route another test already runs through it: the same request body reaches the same provider
# either way, so only the HTTP run (the path a remote client takes) is worth a training job.
HTTP_ONLY = pytest.mark.parametrize("api", ["http"], indirect=True)


def with_changes(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`body` with each dotted path of `changes` (`"training_config.n_epochs"`) set."""
    for path, value in changes.items():
        node = body
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return body


def distribution(home: Path, model: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The embedded default's providers, with all state under `home`.

    With `model` (a tiny model folder), inference serves it as `tiny/llama`.
    """
    imports = home / "import"
    imports.mkdir(parents=True, exist_ok=True)
    files = {"storage_dir": str(home / "files"), **overrides.pop("files", {})}
    datasets = {
        "storage_dir": str(home / "datasets"),
        "allowed_dirs": [str(imports)],
        **overrides.pop("datasets", {}),
    }
    localfs = {"provider_id": "localfs", "provider_type": "inline::localfs"}
    config: dict[str, Any] = {
        "version": 1,
        "distribution": "test",
        "storage_dir": str(home / "stack"),
        "providers": {
            "files": [{**localfs, "config": files}],
            "datasets": [{**localfs, "config": datasets}],
        },
    }
    if model is not None:
        inference = {
            "cache_dir": str(home / "cache"),
            "model_dirs": [
                str(model.parent),
                str(home / "checkpoints"),
                str(home / "training-sessions"),
            ],
            # outputs are compared token for token with fp32 references (plain transformers,
            # peft, vLLM); bf16 serving has its own tests (tests/server/test_mixed_precision.py)
            "dtype": "float32",
            **overrides.pop("inference", {}),
        }
        training = {
            "storage_dir": str(home / "post-training"),
            "checkpoint_root": str(home / "checkpoints"),
            "torch_threads": 1,
            **overrides.pop("post_training", {}),
        }
        config["providers"]["post_training"] = [
            {"provider_id": "peft", "provider_type": "inline::peft", "config": training}
        ]
        sessions = {
            "storage_dir": str(home / "training-sessions"),
            "torch_threads": 1,
            **overrides.pop("training_sessions", {}),
        }
        config["providers"]["training_sessions"] = [
            {"provider_id": "peft", "provider_type": "inline::peft", "config": sessions}
        ]
        config["providers"]["inference"] = [
            {
                "provider_id": "transformers",
                "provider_type": "inline::transformers",
                "config": inference,
            }
        ]
        config["models"] = [
            {"model_id": TINY, "source": {"type": "huggingface", "path": str(model)}}
        ]
    return {**config, **overrides}


def jobs_dir(home: Path) -> Path:
    """Where the post-training provider of `distribution(home, model)` keeps its jobs' folders."""
    return home / "post-training" / "jobs"


def engine_environment(name: str) -> Path:
    """An engine's own environment, built by the project's Makefile (`make test` and
    `make test-slow` build them before pytest starts; a build takes longer than a test may)."""
    root = Path(__file__).resolve().parents[1]
    built = subprocess.run(
        ["make", "-s", f"engine-{name}"], cwd=root, capture_output=True, text=True, timeout=240
    )
    if built.returncode != 0:
        pytest.fail(f"make engine-{name} failed: {built.stderr[-2000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


TERMINAL = ("completed", "failed", "cancelled")


def ended(status: dict[str, Any]) -> bool:
    return status["status"] in TERMINAL


def wait_for_job(
    server: Server | str | httpx.Client,
    job_uuid: str,
    until: Callable[[dict[str, Any]], bool] = ended,
    timeout: float = 240,
) -> dict[str, Any]:
    """The job's status once `until` holds (by default: it has ended), polled from `server`
    (a Server, its URL, or a client with a base URL and the caller's key)."""
    get = server.get if isinstance(server, httpx.Client) else None
    if isinstance(server, Server):
        server = server.url
    path = f"/v1/post-training/jobs/{job_uuid}"
    deadline = time.monotonic() + timeout
    while True:
        answer = get(path) if get is not None else httpx.get(f"{server}{path}")
        status: dict[str, Any] = answer.json()
        if until(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_uuid} did not get there in {timeout:.0f} s: {status}")
        time.sleep(0.25)


def wait_for_step(
    server: Server, jobs_dir: Path, job_uuid: str, step: int, timeout: float = 120
) -> dict[str, Any]:
    """The job's status as soon as its worker has trained `step` steps: read from the progress
    file the worker rewrites after each step (the tiny model trains several steps within one
    status poll, so a test that kills or freezes the worker "at step N" must not poll)."""
    from providers.jobs.folder import JobFolder

    progress = JobFolder(jobs_dir / job_uuid).progress
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads(progress.read_text())["step"] >= step:
                return wait_for_job(server, job_uuid, lambda s: s["progress"]["step"] >= step)
        except (OSError, ValueError):
            pass  # not written yet
        assert time.monotonic() < deadline, f"{job_uuid} did not reach step {step}"
        time.sleep(0.01)


@contextmanager
def ray_head() -> Iterator[str]:
    """A Ray head on loopback, from Ray's own environment (`make engine-ray`), stopped after;
    yields its dashboard's URL (the Jobs API)."""
    ray = str(engine_environment("ray") / "bin" / "ray")
    port, dashboard = free_port(), free_port()
    flags = [
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--num-cpus=2",
        "--object-store-memory=268435456",
        "--disable-usage-stats",
    ]
    # Ray's own memory monitor kills job supervisors when the machine (shared with other
    # tests) runs low; the kernel's OOM killer is left to judge that here.
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0"}
    started = subprocess.run(
        [ray, "start", *flags], capture_output=True, text=True, timeout=120, env=env
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/version", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Ray's dashboard did not answer"
            time.sleep(0.5)
        yield url
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def free_port() -> int:
    """A port free now, for what cannot bind port 0 and say which port it got (Ray's head,
    vLLM) and for addresses where nothing should answer. Another process may take it before
    it is used: `Server` asks for port 0 instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`llama-post run` in its own process, on a loopback port.

    The first start asks for port 0: the server binds a free port itself and logs it (uvicorn's
    "Uvicorn running on ..."), so no other process can take the port between choosing and
    binding it. A restart binds the same port again, where its clients still look for it."""

    def __init__(
        self, config: dict[str, Any] | Path, folder: Path, env: dict[str, str] | None = None
    ) -> None:
        if isinstance(config, dict):
            path = folder / "run.yaml"
            path.write_text(yaml.safe_dump(config))
            config = path
        self.config = config
        self.port: int | None = None
        handle, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=folder)
        os.close(handle)
        self.log = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}

    @property
    def url(self) -> str:
        assert self.port is not None, "the server has no port before its first start()"
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> Server:
        offset = self.log.stat().st_size
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llama_post",
                    "run",
                    str(self.config),
                    "--port",
                    str(self.port or 0),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while (listening := LISTENING.search(self.output(offset))) is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:  # not left running behind the failed test
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server did not start:\n{self.output()}")
            time.sleep(0.05)
        # uvicorn says so once the app's startup has run and the socket listens
        self.port = int(listening[1])
        health = httpx.get(f"{self.url}/v1/health", timeout=10)
        assert health.status_code == 200, health.text
        return self

    def wait_for_output(self, pattern: str, timeout: float = 30) -> str:
        """The server's output once a line of it matches the regex `pattern`."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, output := self.output()):
            assert time.monotonic() < deadline, f"no line matches {pattern!r}:\n{output}"
            time.sleep(0.05)
        return output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self, offset: int = 0) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def rss_peak_kib(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )


@contextmanager
def running(config: dict[str, Any] | Path, folder: Path) -> Iterator[Server]:
    server = Server(config, folder).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Result:
    status: int
    body: Any

    @property
    def error(self) -> dict[str, Any]:
        assert self.status >= 400, f"expected an error, got {self.status}: {self.body}"
        error: dict[str, Any] = self.body["error"]
        return error


class Driver(Protocol):
    name: str

    def call(
        self,
        api: str,
        method: str,
        *path: str,
        body: dict[str, Any] | None = None,
        upload: tuple[str, bytes] | None = None,
    ) -> Result: ...


class HttpDriver:
    name = "http"

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)

    def call(
        self,
        api: str,
        method: str,
        *path: str,
        body: dict[str, Any] | None = None,
        upload: tuple[str, bytes] | None = None,
    ) -> Result:
        route = ROUTES[(api, method)]
        url = route.openapi_path.format(**dict(zip(route.path_params, path, strict=True)))
        kwargs: dict[str, Any] = {}
        if route.request_kind == "query":
            kwargs["params"] = body or {}
        elif route.request_kind == "json":
            kwargs["json"] = body or {}
        elif route.request_kind == "multipart":
            kwargs["data"] = body or {}
            if upload is not None:
                kwargs["files"] = {"file": upload}
        response = self.http.request(route.method, url, **kwargs)
        kind = response.headers.get("content-type", "")
        if kind.startswith("application/json"):
            return Result(response.status_code, response.json())
        if kind.startswith("text/event-stream"):
            events = parse_sse(response.content)
            assert events[-1] == "[DONE]", events
            return Result(response.status_code, events[:-1])
        return Result(response.status_code, response.content)


def parse_sse(body: bytes) -> list[Any]:
    """The `data:` payloads of a server-sent event stream; `[DONE]` stays a string."""
    events: list[Any] = []
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


class LibraryDriver:
    name = "library"

    def __init__(self, client: LlamaPostClient) -> None:
        self.client = client

    def call(
        self,
        api: str,
        method: str,
        *path: str,
        body: dict[str, Any] | None = None,
        upload: tuple[str, bytes] | None = None,
    ) -> Result:
        request = dict(body or {})
        if upload is not None:
            request["file"] = UploadedFile(filename=upload[0], file=io.BytesIO(upload[1]))
        route = ROUTES[(api, method)]
        args: list[Any] = list(path)
        if route.request_model is not None:
            args.append(request)
        try:
            result = getattr(getattr(self.client, api), method)(*args)
        except LlamaPostError as exc:
            return Result(exc.status, {"error": json.loads(exc.to_body().model_dump_json())})
        if isinstance(result, bytes):
            return Result(200, result)
        if isinstance(result, Iterator):
            try:
                return Result(200, [json.loads(chunk.model_dump_json()) for chunk in result])
            except LlamaPostError as exc:
                return Result(exc.status, {"error": json.loads(exc.to_body().model_dump_json())})
        return Result(200, json.loads(result.model_dump_json()))


def create_key(config: Path, owner: str) -> str:
    """A new API key of `owner`, made as an operator makes one: `llama-post keys create`."""
    made = subprocess.run(
        [sys.executable, "-m", "llama_post", "keys", "create", "--owner", owner, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return made.stdout.strip()
