"""The server's side of the experiment trackers (`trackers.py` holds the trackers): at each
watchdog tick each running job's new metric lines go to its trackers in a thread, the rest when
its worker exits, and its runs are closed with its final status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container

from llama_post.apis.post_training import JobStatus, TrainingRequest
from providers.jobs.store import TERMINAL, JobStore
from providers.jobs.trackers import Forwarder, Roots, read_runs, trackers_of

log = logging.getLogger(__name__)


class Tracking:
    def __init__(self, store: JobStore, roots: Roots) -> None:
        self.store = store
        self.roots = roots
        self.forwarders: dict[str, Forwarder] = {}  # jobs with trackers, from their first launch
        self.forwarding: dict[str, asyncio.Task[None]] = {}

    def follow(self, job_uuid: str, request: TrainingRequest) -> None:
        """Feed the job's trackers, if it has any, from now on."""
        if trackers_of(request) and job_uuid not in self.forwarders:
            self.forwarders[job_uuid] = self._forwarder(job_uuid)

    def _forwarder(self, job_uuid: str) -> Forwarder:
        return Forwarder(
            self.store.request(job_uuid),
            self.store.jobs_dir / job_uuid,
            self.roots,
            lambda line: self.store.note(job_uuid, line),
        )

    def tick(self, running: Container[str]) -> None:
        """At each watchdog tick, send each running job's new metric lines to its trackers, in
        a thread; a job still sending the last tick's waits for the next."""
        for job_uuid, forwarder in self.forwarders.items():
            task = self.forwarding.get(job_uuid)
            if job_uuid in running and (task is None or task.done()):
                self.forwarding[job_uuid] = asyncio.create_task(self._send(job_uuid, forwarder))

    async def flush(self, job_uuid: str) -> None:
        """Send every line the job's worker wrote (before its status changes)."""
        if job_uuid in self.forwarders:
            await self._send(job_uuid, self.forwarders[job_uuid])

    async def _send(self, job_uuid: str, forwarder: Forwarder) -> None:
        try:
            await asyncio.to_thread(forwarder.forward)
        except Exception:  # the job's metrics file, not a tracker (those are caught per tracker)
            log.exception("job %s: its metrics could not be forwarded", job_uuid)

    async def end(self, job_uuid: str, stopping: bool) -> None:
        """Send a job's last metric lines and close its trackers' runs: with its status once it
        has ended, without one when the server stops (the job goes on at the next start). A job
        waiting for a retry keeps its runs open."""
        try:
            status = JobStatus(self.store.existing(job_uuid)["status"])
            if status not in TERMINAL and not stopping:
                return
            forwarder = self.forwarders.pop(job_uuid, None)
            self.forwarding.pop(job_uuid, None)
            if forwarder is None:  # ended in a later server than its last step
                if not read_runs(self.store.jobs_dir / job_uuid):
                    return
                forwarder = self._forwarder(job_uuid)
            await asyncio.to_thread(forwarder.close, status if status in TERMINAL else None)
        except Exception:
            log.exception("job %s: its trackers could not be closed", job_uuid)
