"""`llama_post/remote.py`'s resends, against a loopback server that hangs up without answering:
an idempotent request is sent again (bounded), a POST that may have been acted on is not."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from llama_post.apis.datasets import IterRowsRequest
from llama_post.errors import UpstreamUnavailableError
from llama_post.remote import ROUTES, RemoteClient


class HangUp:
    """Accepts connections, reads the request, and closes without a word; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.seen = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.seen += 1


@pytest.mark.parametrize(
    ("api", "name", "sent"),
    [("datasets", "iterrows", 3), ("post_training", "cancel_job", 1)],
    ids=["GET is resent", "POST is not"],
)
def test_only_idempotent_requests_are_sent_again(api: str, name: str, sent: int) -> None:
    upstream = HangUp()
    route = ROUTES[api, name]

    async def call() -> None:
        client = RemoteClient("trainer", upstream.url, max_retries=2)
        try:
            request = IterRowsRequest() if route.request_model is IterRowsRequest else None
            path = {p: "sft-0123456789abcdef" for p in route.path_params}
            with pytest.raises(UpstreamUnavailableError) as refused:
                await client.call(route, request, **path)
            assert "provider 'trainer'" in refused.value.message
        finally:
            await client.close()

    with upstream.sock:
        asyncio.run(call())
    assert upstream.seen == sent
