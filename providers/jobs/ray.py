"""Ray jobs as a launcher's workers: each attempt of a job is one Ray job, submitted to the
cluster's Jobs API (the dashboard's REST routes, over HTTP: Ray itself is not imported here)
with `submission_id` = `<job>-attempt-<n>` (Ray refuses a reused id).

`RayJob` looks like the worker process `LocalJobs` supervises: `wait()` polls the job until
its state is final and answers an exit code, `send_signal` stops it. Ray's states map as
PENDING, RUNNING -> in progress; SUCCEEDED -> 0; FAILED -> the entrypoint's exit code, or
`EXIT_LOST` when it has none (the driver or its node was lost); STOPPED -> `EXIT_CANCELLED`
(our own cancel, or a stop from outside, which is retried). A Ray job outlives this server:
a server that starts again re-attaches to it instead of submitting it again.

The entrypoint runs the worker's command with the job's folder as on this machine, so that
folder (under `storage_dir`) and its checkpoints (under `checkpoint_root`) must be storage every
node sees at the same paths; `probe` checks that a Ray job can write there and this server
reads what it wrote. The worker appends its output to the job's `train.log` itself.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

import httpx

from providers.jobs.folder import EXIT_CANCELLED, EXIT_LOST
from providers.jobs.launchers import RayLauncher

FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
LOST_AFTER_SECONDS = 120.0  # the cluster unreachable this long: the attempt is lost


class RayUnavailable(Exception):
    pass


class RayClient:
    def __init__(self, launcher: RayLauncher) -> None:
        self.launcher = launcher
        self.http = httpx.AsyncClient(base_url=launcher.address, timeout=30)

    async def version(self) -> dict[str, Any]:
        try:
            answer = await self.http.get("/api/version", timeout=5)
        except httpx.TransportError as exc:
            raise RayUnavailable(f"{type(exc).__name__}: {exc}") from None
        if answer.status_code != 200:
            raise RayUnavailable(f"GET /api/version answered {answer.status_code}")
        found: dict[str, Any] = answer.json()
        return found

    async def submit(
        self, submission_id: str, entrypoint: str, env: dict[str, str], metadata: dict[str, str]
    ) -> None:
        body = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "runtime_env": {"env_vars": env},
            "metadata": metadata,
            "entrypoint_num_cpus": self.launcher.num_cpus,
            "entrypoint_num_gpus": self.launcher.num_gpus,
        }
        answer = await self.http.post("/api/jobs/", json=body)
        if answer.status_code != 200:
            raise RayUnavailable(
                f"Ray refused job {submission_id}: {answer.status_code} {answer.text[-500:]}"
            )

    async def info(self, submission_id: str) -> dict[str, Any] | None:
        """The job's details (status, message, driver_exit_code); None when Ray has no such job."""
        answer = await self.http.get(f"/api/jobs/{submission_id}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    async def logs(self, submission_id: str) -> str:
        answer = await self.http.get(f"/api/jobs/{submission_id}/logs")
        answer.raise_for_status()
        return str(answer.json().get("logs", ""))

    async def stop(self, submission_id: str) -> None:
        await self.http.post(f"/api/jobs/{submission_id}/stop")

    async def aclose(self) -> None:
        await self.http.aclose()

    def entrypoint(self, command: list[str], log: Path) -> str:
        """The shell line a Ray job runs: the worker's command with the launcher's interpreter,
        its output appended to the job's log."""
        python = self.launcher.python or command[0]
        argv = [python, *command[1:]]
        return f"exec {shlex.join(argv)} >> {shlex.quote(str(log))} 2>&1"

    async def probe(self, folders: list[Path], python: str) -> str | None:
        """Whether a Ray job can write into each folder and this server reads it back; the
        reason when not."""
        token = secrets.token_hex(8)
        files = [folder / f".ray-probe-{token}" for folder in folders]
        script = (
            "import pathlib, sys; [pathlib.Path(p).write_text(sys.argv[1]) for p in sys.argv[2:]]"
        )
        argv = [self.launcher.python or python, "-c", script, token, *map(str, files)]
        submission_id = f"llama-post-probe-{token}"
        try:
            await self.submit(submission_id, shlex.join(argv), {}, {"llama_post": "probe"})
            deadline = time.monotonic() + 120
            info = await self.info(submission_id)
            while info is not None and info["status"] not in FINAL:
                if time.monotonic() > deadline:
                    await self.stop(submission_id)
                    return "a probe job did not finish in 120 s (is the cluster out of CPUs?)"
                await asyncio.sleep(0.3)
                info = await self.info(submission_id)
            if info is None or info["status"] != "SUCCEEDED":
                # Ray's message of a failed entrypoint ends with the end of its output
                text = (info or {}).get("message") or await self.logs(submission_id)
                said = [line for line in text.strip().splitlines() if line.strip()][-1:]
                code = (info or {}).get("driver_exit_code")
                return (
                    f"a Ray job could not write there (exit code {code}): "
                    f"{said[0] if said else 'no output'}"
                )
            for path in files:
                if not path.is_file() or path.read_text() != token:
                    return (
                        f"a Ray job wrote {path}, but this server does not see it: the folder "
                        "is not storage every node shares"
                    )
            return None
        finally:
            for path in files:
                path.unlink(missing_ok=True)


class RayJob:
    """One attempt's Ray job, supervised as `LocalJobs` supervises a process."""

    outlives_server = True  # a server that stops leaves it running, and re-attaches to it
    pid: int | None = None

    def __init__(self, client: RayClient, submission_id: str) -> None:
        self.client = client
        self.submission_id = submission_id
        self.returncode: int | None = None
        self.state = "PENDING"
        self.message = ""
        self._stopping: asyncio.Task[None] | None = None

    async def wait(self) -> int:
        unreachable_since: float | None = None
        while self.returncode is None:
            try:
                info = await self.client.info(self.submission_id)
                unreachable_since = None
            except httpx.HTTPError as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > LOST_AFTER_SECONDS:
                    self.message = f"the Ray cluster has been unreachable: {exc}"
                    self.returncode = EXIT_LOST
                    break
                await asyncio.sleep(self.client.launcher.poll_seconds)
                continue
            if info is None:
                self.message = f"Ray no longer knows job {self.submission_id}"
                self.returncode = EXIT_LOST
                break
            self.state, self.message = info["status"], info.get("message") or ""
            if self.state in FINAL:
                self.returncode = exit_code(info)
                break
            await asyncio.sleep(self.client.launcher.poll_seconds)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Any signal stops the Ray job (Ray sends its entrypoint SIGTERM, then SIGKILL)."""
        if self.returncode is None and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(
                self.client.stop(self.submission_id)
            )


def exit_code(info: dict[str, Any]) -> int:
    """A final Ray state as the exit code of a worker process."""
    status = info["status"]
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return EXIT_CANCELLED
    code = info.get("driver_exit_code")
    if code is None:
        return EXIT_LOST
    return int(code)


def submission_id(job_uuid: str, attempt: int) -> str:
    return f"{job_uuid}-attempt-{attempt}"
