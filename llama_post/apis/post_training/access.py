"""What a post-training provider is handed to let a job's worker call this server's inference
(a GRPO job's `score_model` grader): served by the stack (`distribution/worker_access.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Grant:
    """One attempt's way in: where the server listens, and the key it may use (None where auth
    is off), scoped to inference as the job's owner."""

    url: str
    key: str | None
    key_id: str | None

    def __repr__(self) -> str:  # never the key
        return f"Grant(url={self.url!r}, key_id={self.key_id!r})"


class InferenceAccess(Protocol):
    def check(self, param: str) -> None:
        """Refuse (400 naming `param`) a job needing a grant where none can be given."""
        ...

    async def grant(self, job_uuid: str) -> Grant:
        """A grant for one attempt of the job; give it back with `revoke` when it ends."""
        ...

    def revoke(self, grant: Grant) -> None: ...
