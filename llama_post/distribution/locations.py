"""Whose a folder is: ownership by location, beside ownership by id (`owners.py`).

A request may name a folder or file on this server (a model's `source.path`, vLLM's `lora_path`,
a job's `checkpoint_dir`, a tracker's `log_dir`). Wherever that path is resolved (`..` and
symlinks, `storage.resolve_path`), the resolved path is handed to `Locations.usable` before it is
used: a path that lies in a folder of another owner's job (its folder and its checkpoints', as its
post-training provider reports them, `job_folders`; a merge's or export's likewise), of another
owner's training session (its saved states, `session_folders`) or of another owner's imported
model is not the caller's to read or write, whatever route named it. Each route then answers as
for a path that names nothing (404), or with a 400 that names nothing of the other owner's. An
admin key, and an in-process call (no key), may use any path, as they see every id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from llama_post.distribution.owners import Owners


class JobFolders(Protocol):
    """What keeps jobs' folders on this server: the post-training providers (their router)."""

    def job_folders(self, job_uuid: str) -> list[Path]: ...


class SessionFolders(Protocol):
    """What keeps training sessions' folders on this server (their saved states)."""

    def session_folders(self, session_id: str) -> list[Path]: ...


class Locations:
    def __init__(self, owners: Owners, imports_dir: Path) -> None:
        self.owners = owners
        self.imports_dir = imports_dir.resolve()
        self.jobs: list[JobFolders] = []  # set by the stack once post-training is built
        self.sessions: list[SessionFolders] = []  # and once training sessions are
        self._folders: dict[str, list[Path]] = {}  # a job's folders, which never move

    def usable(self, path: Path) -> bool:
        """Whether the caller may use `path` (resolved): it lies in no folder of a job or an
        imported model that another owner made."""
        return not any(path.is_relative_to(folder) for folder in self._others())

    def _others(self) -> Iterator[Path]:
        for job_uuid in self.owners.others("job"):
            yield from self._job_folders(job_uuid)
        for export_id in self.owners.others("export"):  # a merge's or export's, as a job's
            yield from self._job_folders(export_id)
        for model_id in self.owners.others("model"):
            yield self.imports_dir / model_id
        for session_id in self.owners.others("session"):
            for sessions in self.sessions:
                yield from (f.resolve() for f in sessions.session_folders(session_id))

    def _job_folders(self, job_uuid: str) -> list[Path]:
        folders = self._folders.get(job_uuid)
        if folders is None:
            folders = [f.resolve() for jobs in self.jobs for f in jobs.job_folders(job_uuid)]
            if folders:  # a job not written yet, or run elsewhere, is asked again
                self._folders[job_uuid] = folders
        return folders
