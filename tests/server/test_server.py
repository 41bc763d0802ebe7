"""The real server, in its own process: restarts, signals, limits and failures."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.support import Server, distribution, running

ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    config = distribution(tmp_path)
    content = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    with running(config, tmp_path) as server:
        file = httpx.post(
            f"{server.url}/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("rows.jsonl", content)},
        ).json()
        ds = httpx.post(
            f"{server.url}/v1/datasets",
            json={
                "purpose": "instruct",
                "dataset_id": "kept",
                "source": {"type": "file", "file_id": file["id"]},
            },
        ).json()
        httpx.post(f"{server.url}/v1/datasetio/append-rows/kept", json={"rows": ROWS[:2]})
    with running(config, tmp_path) as server:
        assert httpx.get(f"{server.url}/v1/files/{file['id']}").json() == file
        assert httpx.get(f"{server.url}/v1/files/{file['id']}/content").content == content
        again = httpx.get(f"{server.url}/v1/datasets/kept").json()
        assert again == {**ds, "row_count": 12}
        rows = httpx.get(f"{server.url}/v1/datasetio/iterrows/kept", params={"limit": 100}).json()[
            "data"
        ]
        assert rows == ROWS + ROWS[:2]


def test_sigint_and_sigterm_shut_down_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        server = Server(distribution(tmp_path), tmp_path).start()
        assert server.stop(sig) == 0
        assert "Application shutdown complete" in server.output()
        assert "Traceback" not in server.output()


def test_a_large_upload_streams_to_disk(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(200):
            f.write(b"\x00" * (1 << 20))
    with running(distribution(tmp_path), tmp_path) as server:
        before = server.rss_peak_kib()
        with big.open("rb") as f:
            created = httpx.post(
                f"{server.url}/v1/files",
                data={"purpose": "batch"},
                files={"file": ("big.bin", f)},
                timeout=120,
            ).json()
        assert created["bytes"] == 200 << 20
        grown_mib = (server.rss_peak_kib() - before) / 1024
        assert grown_mib < 64, f"the server's peak memory grew {grown_mib:.0f} MiB"


def test_uploads_over_the_limit_get_413_and_leave_nothing(tmp_path: Path) -> None:
    config = distribution(tmp_path, files={"max_upload_bytes": 1000})
    with running(config, tmp_path) as server:
        refused = httpx.post(
            f"{server.url}/v1/files",
            data={"purpose": "batch"},
            files={"file": ("x.bin", b"x" * 1001)},
        )
        assert refused.status_code == 413
        assert refused.json()["error"]["message"].endswith("(max_upload_bytes)")
        ok = httpx.post(
            f"{server.url}/v1/files",
            data={"purpose": "batch"},
            files={"file": ("x.bin", b"x" * 1000)},
        )
        assert ok.status_code == 200
        assert [f["id"] for f in httpx.get(f"{server.url}/v1/files").json()["data"]] == [
            ok.json()["id"]
        ]
    assert list((tmp_path / "files" / "tmp").iterdir()) == []


def test_bodies_that_are_not_requests(tmp_path: Path) -> None:
    with running(distribution(tmp_path), tmp_path) as server:
        url = f"{server.url}/v1/datasets"
        not_json = httpx.post(url, content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["param"] == "body"
        not_object = httpx.post(url, json=[1, 2])
        assert not_object.status_code == 422
        empty = httpx.post(url)
        assert empty.status_code == 422 and empty.json()["error"]["param"] == "purpose"
        assert _raw_status(server.url, "POST /v1/datasets", {"content-length": str(1 << 40)}) == 413
        not_multipart = httpx.post(f"{server.url}/v1/files", json={"purpose": "batch"})
        assert not_multipart.status_code == 422
        # Nesting too deep to parse is a 400, and so is any nesting past the limit.
        for levels in (100_000, 1_000, 70):
            deep = b'{"purpose": "instruct", "metadata": {"x": ' + b"[" * levels + b"]" * levels
            refused = httpx.post(url, content=deep + b"}}", headers=JSON)
            assert refused.status_code == 400, (levels, refused.text)
            assert refused.json()["error"]["param"].startswith(("body", "metadata.x")), refused.text
        wrong_method = httpx.put(url)
        assert wrong_method.status_code == 405 and "error" in wrong_method.json()
        assert httpx.get(f"{server.url}/v1/health").json()["status"] == "OK"


JSON = {"content-type": "application/json"}


def _raw_status(url: str, request_line: str, headers: dict[str, str]) -> int:
    """Send only a request's head, as a client that lies about its body would."""
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port or 80), timeout=10) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"{request_line} HTTP/1.1\r\nhost: x\r\n{head}\r\n".encode())
        return int(sock.recv(1024).split(b" ")[1])


def test_a_chunked_body_is_cut_at_the_limit(tmp_path: Path) -> None:
    """A body that declares no length is counted as it arrives: the 413 comes once it passes
    64 MiB, before it ends (this one never does), and the server goes on."""
    with running(distribution(tmp_path), tmp_path) as server:
        address = httpx.URL(server.url)
        with socket.create_connection((address.host, address.port or 80), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/datasets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
            for _ in range(66):  # 66 MiB of whitespace, and no last chunk
                sock.sendall(chunk)
            head, body = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 413 "), head
        error = json.loads(body)["error"]
        assert error["type"] == "payload_too_large_error"
        assert f"{64 << 20}-byte limit" in error["message"], error
        assert httpx.get(f"{server.url}/v1/health").json()["status"] == "OK"


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """A response's head and its body (of the length its head declares)."""
    received = b""
    while b"\r\n\r\n" not in received:
        more = sock.recv(65536)
        assert more, received
        received += more
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:"))[15:]
    )
    while len(body) < length:
        more = sock.recv(65536)
        assert more, body
        body += more
    return head, body


def test_an_unexpected_failure_is_a_logged_500_and_the_server_goes_on(tmp_path: Path) -> None:
    with running(distribution(tmp_path), tmp_path) as server:
        httpx.post(
            f"{server.url}/v1/datasets",
            json={
                "purpose": "instruct",
                "dataset_id": "broken",
                "source": {"type": "rows", "rows": ROWS},
            },
        )
        (tmp_path / "datasets" / "data" / "broken" / "rows.jsonl").unlink()
        failed = httpx.get(f"{server.url}/v1/datasetio/iterrows/broken")
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "internal_error"
        assert "rows.jsonl" not in failed.text  # internals stay in the log
        assert httpx.get(f"{server.url}/v1/datasets/broken").status_code == 200
        assert "FileNotFoundError" in server.output()


def test_inspection_routes(server: Server) -> None:
    routes = httpx.get(f"{server.url}/v1/inspect/routes").json()["data"]
    assert {
        "route": "/v1/files",
        "method": "POST",
        "api": "files",
        "name": "upload_file",
        "streaming": False,
        "provider_types": ["inline::localfs"],
    } in routes
    providers = httpx.get(f"{server.url}/v1/inspect/providers").json()["data"]
    assert {(p["api"], p["provider_type"]) for p in providers} == {
        ("files", "inline::localfs"),
        ("datasets", "inline::localfs"),
        ("inference", "inline::transformers"),
        ("post_training", "inline::peft"),
        ("training_sessions", "inline::peft"),
    }
    # Llama Stack's Providers API: the same providers, each with its health
    listed = httpx.get(f"{server.url}/v1/providers").json()["data"]
    assert listed == providers
    health = {p["provider_type"]: p["health"] for p in listed}
    assert health["inline::transformers"] == {"status": "OK"}
    assert health["inline::localfs"]["status"] == "Not Implemented"
    one = httpx.get(f"{server.url}/v1/providers/transformers").json()
    assert one == next(p for p in listed if p["provider_id"] == "transformers")
    missing = httpx.get(f"{server.url}/v1/providers/nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "provider_id"
    assert httpx.get(f"{server.url}/v1/version").json()["version"]
    assert httpx.get(f"{server.url}/openapi.json").json()["openapi"] == "3.1.0"


def test_a_bad_distribution_is_a_clear_startup_error(tmp_path: Path) -> None:
    config = distribution(tmp_path)
    config["providers"]["files"][0]["provider_type"] = "inline::nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "llama_post", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "providers.files[0].provider_type" in done.stderr
    assert "Traceback" not in done.stderr


def test_two_providers_of_one_api_route_by_id(tmp_path: Path) -> None:
    config = distribution(tmp_path)
    second = {
        "provider_id": "second",
        "provider_type": "inline::localfs",
        "config": {"storage_dir": str(tmp_path / "datasets2")},
    }
    config["providers"]["datasets"].append(second)
    rows = {"type": "rows", "rows": ROWS}
    with running(config, tmp_path) as server:
        url = f"{server.url}/v1/datasets"
        unnamed = httpx.post(url, json={"purpose": "instruct", "source": rows})
        assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "provider_id"
        for provider in ("localfs", "second"):
            made = httpx.post(
                url,
                json={
                    "purpose": "instruct",
                    "source": rows,
                    "dataset_id": f"in-{provider}",
                    "provider_id": provider,
                },
            )
            assert made.status_code == 200, made.text
        taken = httpx.post(
            url,
            json={
                "purpose": "instruct",
                "source": rows,
                "dataset_id": "in-localfs",
                "provider_id": "second",
            },
        )
        assert taken.status_code == 409
        assert [d["identifier"] for d in httpx.get(url).json()["data"]] == [
            "in-localfs",
            "in-second",
        ]
        page = httpx.get(f"{server.url}/v1/datasetio/iterrows/in-second").json()
        assert page["data"] == ROWS
    assert (tmp_path / "datasets2" / "data" / "in-second").is_dir()
    assert not (tmp_path / "datasets" / "data" / "in-second").exists()
