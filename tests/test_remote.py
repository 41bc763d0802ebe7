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


def test_a_front_lets_only_admin_keys_name_the_trainers_folders() -> None:
    """remote::llama-post: `checkpoint_dir` and a tracker's `log_dir` are the trainer's folders,
    where every owner of the front is one key: only an admin (or an in-process call) names one."""
    from llama_post.apis.post_training import SupervisedFineTuneRequest
    from llama_post.auth import PRINCIPAL, Principal
    from llama_post.errors import InvalidRequestError
    from providers.remote.llama_post.post_training import _named_folders

    base = {
        "model": "tiny",
        "training_config": {"data_config": {"dataset_id": "rows", "batch_size": 1}},
        "algorithm_config": {"type": "LoRA", "rank": 2, "alpha": 4},
    }
    plain = SupervisedFineTuneRequest.model_validate(base)
    in_folder = SupervisedFineTuneRequest.model_validate(base | {"checkpoint_dir": "alices/run"})
    logged = SupervisedFineTuneRequest.model_validate(
        base | {"logger_config": {"trackers": [{"type": "tensorboard", "log_dir": "tb/alice"}]}}
    )
    user = PRINCIPAL.set(Principal(owner="bob", admin=False, key_id="k1"))
    try:
        _named_folders(plain)
        for request, field in (
            (in_folder, "checkpoint_dir"),
            (logged, "logger_config.trackers[0].log_dir"),
        ):
            with pytest.raises(InvalidRequestError) as refused:
                _named_folders(request)
            assert refused.value.param == field and "admin key" in refused.value.message
    finally:
        PRINCIPAL.reset(user)
    admin = PRINCIPAL.set(Principal(owner="ops", admin=True, key_id="k2"))
    try:
        _named_folders(in_folder)
        _named_folders(logged)
    finally:
        PRINCIPAL.reset(admin)
    _named_folders(in_folder)  # in process, no key
