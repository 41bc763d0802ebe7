"""Archives registered by URL: only under run.yaml's `archive_url_prefixes`, matched as parsed,
normalised URLs (scheme, user info, host, port, path segments), never as a string prefix.

A real listener on loopback records every request: a URL outside the prefix, however it is
spelled, is refused before anything is fetched."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_post.apis.models import ArchiveSource
from llama_post.distribution.config import load_run_config
from llama_post.distribution.imports import ArchiveImports
from llama_post.errors import ConfigError, InvalidRequestError
from tests.support import distribution


class Listener:
    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    thread = threading.Thread(target=listening.server.serve_forever, daemon=True)
    thread.start()
    yield listening
    listening.server.shutdown()
    listening.server.server_close()
    thread.join()


def _register(imports: ArchiveImports, url: str) -> InvalidRequestError:
    source = ArchiveSource.model_construct(type="archive", url=url, file_id=None, sha256=None)
    with pytest.raises(InvalidRequestError) as refused:
        asyncio.run(imports.unpack("imported/model", source, None))
    return refused.value


def test_a_url_outside_the_prefixes_is_refused_unfetched(
    tmp_path: Path, listener: Listener
) -> None:
    base = listener.url
    imports = ArchiveImports(tmp_path / "imported", [f"{base}/archives"])
    outside = [
        f"{base}/archives/../outside.tar.gz",
        f"{base}/archives/./../outside.tar.gz",
        f"{base}/archives/%2e%2e/outside.tar.gz",
        f"{base}/archives/%2E%2E/outside.tar.gz",
        f"{base}/archives/.%2e/outside.tar.gz",
        f"{base}/archives/%2e%2e%2foutside.tar.gz",
        f"{base}/archives/..%2Foutside.tar.gz",
        f"{base}/archives/%252e%252e/outside.tar.gz",
        f"{base}/archives\\..\\outside.tar.gz",
        f"{base}/archivesx/outside.tar.gz",
        f"{base}/archives",
        f"http://127.0.0.1:{listener.port}@localhost:{listener.port}/archives/a.tar.gz",
        f"http://localhost:{listener.port}/archives/a.tar.gz",
        f"http://127.0.0.1.nip.io:{listener.port}/archives/a.tar.gz",
        f"https://127.0.0.1:{listener.port}/archives/a.tar.gz",
        f"{base}:1/archives/a.tar.gz",
        f"file://{tmp_path}/archives/a.tar.gz",
    ]
    for url in outside:
        refused = _register(imports, url)
        assert refused.param == "source.url", url
        assert f"{base}/archives/" in refused.message, refused.message
    assert listener.paths == []  # nothing was fetched, not even to find out
    assert not (tmp_path / "imported").exists()

    # under the prefix, the normalised URL is what is fetched (the listener answers 404)
    for url in (f"{base}/archives/a.tar.gz", f"{base}/archives/x/../%61.tar.gz?t=1#frag"):
        answered = _register(imports, url)
        assert "answered 404" in answered.message, answered.message
    assert listener.paths == ["/archives/a.tar.gz", "/archives/a.tar.gz?t=1"]


def test_a_prefix_that_is_not_an_http_folder_is_a_config_error(tmp_path: Path) -> None:
    for prefix in ("ftp://a/archives", "a.example/archives", "http://a/b?x=1", "http://u:p@a/b"):
        raw = distribution(tmp_path) | {"archive_url_prefixes": [prefix]}
        with pytest.raises(ConfigError) as caught:
            load_run_config(raw)
        fields = [d.field for d in caught.value.details]
        assert fields == ["archive_url_prefixes[0]"], str(caught.value)
