"""How a training job's worker reaches this server's inference: a GRPO job graded by a
`score_model` grader asks the models served here from its own process.

The server says where it listens (`serving`, once uvicorn is bound); a post-training provider,
handed this object by the stack (`use_worker_access`), asks for a `Grant` when it starts an
attempt that needs one and gives it back when the attempt ends. Under auth, a grant carries a
key the `KeyStore` makes for that attempt alone: scoped to the inference routes (the server
answers any other with 403), as the job's owner (so the models it may use are those its owner
may, checked as for any request), never an admin's, and revoked when the attempt ends (and at
the next start, for those a killed server left). The key travels in the worker's environment,
never in the job's folder, its log, or its status.
"""

from __future__ import annotations

import asyncio

from llama_post.apis.post_training.access import Grant
from llama_post.auth import KeyStore, is_loopback
from llama_post.distribution.owners import Owners
from llama_post.errors import InvalidRequestError

WAIT_FOR_SERVER_S = 120.0  # a job resumed as the server starts waits for it to listen


class WorkerAccess:
    """The stack's `InferenceAccess`."""

    def __init__(self, owners: Owners) -> None:
        self.owners = owners
        self.url: str | None = None
        self.keys: KeyStore | None = None
        self._serving = asyncio.Event()

    def serving(self, host: str, port: int, keys: KeyStore | None) -> None:
        """The server listens on `host`:`port` (its workers reach it on loopback when it binds
        every interface), with `keys` when auth is on."""
        if host in ("0.0.0.0", "") or is_loopback(host):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.keys = keys
        if keys is not None:
            keys.revoke_scoped()  # a killed server's grants
        self._serving.set()

    def check(self, param: str) -> None:
        """Refuse (400 naming `param`) a job that needs a grant where no server will serve one:
        a stack used in process, as a library."""
        if self.url is None:
            raise InvalidRequestError(
                f"{param}: a score_model grader in training calls this server's inference from "
                "the job's worker, so it needs the HTTP server (`llama-post run`); the library "
                "has none",
                param=param,
            )

    async def grant(self, job_uuid: str) -> Grant:
        """A grant for one attempt of `job_uuid`: waits for the server to listen (a job
        resumed while it starts)."""
        try:
            await asyncio.wait_for(self._serving.wait(), WAIT_FOR_SERVER_S)
        except TimeoutError:
            raise InvalidRequestError(
                "the job's grader calls this server's inference, and no server listens here"
            ) from None
        assert self.url is not None
        if self.keys is None:
            return Grant(self.url, None, None)
        # a job no owner made (auth was off, or an in-process call) may use what is no one's
        owner = self.owners.owner_of("job", job_uuid) or ""
        key_id, key = self.keys.create_scoped(owner, "inference")
        return Grant(self.url, key, key_id)

    def revoke(self, grant: Grant) -> None:
        if self.keys is not None and grant.key_id is not None:
            self.keys.revoke_scoped(grant.key_id)
