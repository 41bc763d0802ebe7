"""The launch: how an attempt's worker is started by the provider's `launcher` (one local
process, torchrun's ranks, or a Ray job), what that launcher cannot do here (refused at
creation), and how its exit is read back (torchrun's report of the failed rank)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from llama_post.apis.post_training import TrainingRequest
from llama_post.errors import InvalidRequestError
from providers.jobs.config import LocalJobsConfig
from providers.jobs.folder import ATTEMPT_ENV, EXIT_LOST, Prepared
from providers.jobs.launchers import RayLauncher, TorchrunLauncher
from providers.jobs.ray import RayClient, RayJob, RayUnavailable, submission_id
from providers.jobs.store import JobStore

log = logging.getLogger(__name__)
CHECKOUT = str(Path(__file__).resolve().parents[2])  # where a Ray job imports providers/ from
Worker = asyncio.subprocess.Process | RayJob


class Launch:
    """Starts workers by the provider's launcher."""

    def __init__(self, config: LocalJobsConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.launcher = config.launcher
        self.ray = RayClient(config.launcher) if isinstance(config.launcher, RayLauncher) else None
        self.ray_checked_at = 0.0  # when a probe job last wrote into the shared folders

    @property
    def torchrun(self) -> TorchrunLauncher | None:
        launcher = self.launcher
        if isinstance(launcher, RayLauncher):
            return launcher.torchrun
        return launcher if isinstance(launcher, TorchrunLauncher) else None

    def ranks(self) -> int:
        torchrun = self.torchrun
        return torchrun.nproc_per_node * torchrun.nnodes if torchrun else 1

    def device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    async def start(
        self, job_uuid: str, attempt: int, command: list[str], resources: dict[str, Any]
    ) -> Worker | None:
        """Start the attempt's worker running `command` (adding where it runs to `resources`);
        None where the Ray cluster refused it (the cluster's fault: the job waits its turn)."""
        name = f"{job_uuid}/{attempt}"
        folder = self.store.folder(job_uuid)
        torchrun = self.torchrun
        if torchrun is not None:
            command = torchrun_command(torchrun, command, job_uuid)
        if self.ray is None:
            with folder.log.open("ab") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                    env=_worker_env(name, torchrun),
                )
            resources["worker_pid"] = proc.pid
            return proc
        ray_id = submission_id(job_uuid, attempt)
        env = {ATTEMPT_ENV: name, "PYTHONPATH": self.ray.launcher.pythonpath or CHECKOUT}
        if torchrun is not None and torchrun.rdzv_endpoint is None:
            env["GLOO_SOCKET_IFNAME"] = "lo"
        if self.config.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.config.torch_threads)
        try:
            await self.ray.submit(
                ray_id,
                self.ray.entrypoint(command, folder.log),
                env,
                {"llama_post_job": job_uuid, "attempt": str(attempt)},
            )
        except Exception as exc:  # the cluster, not the job: tried again
            self.store.note(job_uuid, f"attempt {attempt} could not be submitted to Ray: {exc}")
            return None
        resources["ray_submission_id"] = ray_id
        return RayJob(self.ray, ray_id)

    async def find(self, job_uuid: str, attempts: list[dict[str, Any]]) -> RayJob | None:
        """The Ray job of the job's unfinished attempt, if Ray still knows it (a previous
        server submitted it)."""
        if self.ray is None or not attempts or attempts[-1].get("ended_at") is not None:
            return None
        name = attempts[-1].get("submission_id")
        try:
            found = name is not None and await self.ray.info(name) is not None
        except Exception:
            log.warning("job %s: Ray could not be asked about %s", job_uuid, name, exc_info=True)
            found = False
        return RayJob(self.ray, str(name)) if found else None

    def exit_code(self, job_uuid: str, code: int) -> int:
        """The worker's exit as its failed rank's own (torchrun answers 1 whatever it was)."""
        if self.torchrun is not None and code not in (0, EXIT_LOST):
            return root_cause(self.store.folder(job_uuid).log, code)
        return code

    async def aclose(self) -> None:
        if self.ray is not None:
            await self.ray.aclose()

    # -- at creation ---------------------------------------------------------------------------

    def refusals(self, request: TrainingRequest, multi_rank: bool) -> list[tuple[str, str]]:
        """What the provider's launcher cannot do here: more ranks on this node than it has
        devices (CUDA) or cores (CPU), or a recipe that runs as one rank only."""
        torchrun = self.torchrun
        if torchrun is None:
            return []
        if not multi_rank:
            return [
                (
                    "launcher.nproc_per_node",
                    f"this trainer's {request.method.upper()} recipe runs as one rank; use a "
                    "provider whose launcher is local or ray",
                )
            ]
        if isinstance(self.launcher, RayLauncher):
            return []  # counted on the Ray node, by torchrun there
        device = self.device()
        if device.startswith("cuda"):
            import torch

            have, what = torch.cuda.device_count(), "CUDA devices"
        else:
            have, what = os.cpu_count() or 1, "CPU cores"
        if torchrun.nproc_per_node > have:
            return [
                (
                    "launcher.nproc_per_node",
                    f"the provider's launcher starts {torchrun.nproc_per_node} ranks on this "
                    f"node, which has {have} {what}; lower nproc_per_node",
                )
            ]
        return []

    async def check(self, prepared: Prepared) -> None:
        """Refuse a job its launcher cannot run here: too few rows for every rank's share of a
        step, a Ray cluster out of reach, or shared folders a Ray job cannot write."""
        spec = prepared.spec
        cfg = spec.request.training_config
        if spec.ranks > 1:
            needed = cfg.data.batch_size * cfg.gradient_accumulation_steps * spec.ranks
            if len(prepared.train) < needed:
                raise InvalidRequestError(
                    f"training_config.data_config.batch_size: a step of {spec.ranks} ranks "
                    f"takes batch_size x gradient_accumulation_steps x ranks = {needed} rows; "
                    f"the dataset has {len(prepared.train)}",
                    param="training_config.data_config.batch_size",
                )
        if self.ray is None or time.time() - self.ray_checked_at < 300:
            return
        address = self.ray.launcher.address
        try:
            await self.ray.version()
        except RayUnavailable as exc:
            raise InvalidRequestError(
                f"launcher.address: the Ray cluster at {address} cannot be reached ({exc}); "
                "start it or correct the provider's launcher.address",
                param="launcher.address",
            ) from None
        folders = [self.store.jobs_dir, self.config.checkpoint_root]
        why = await self.ray.probe(folders, sys.executable)
        if why is not None:
            raise InvalidRequestError(
                f"checkpoint_root: {why} ({', '.join(map(str, folders))}); the provider's "
                "storage_dir and checkpoint_root must be storage every Ray node can write",
                param="checkpoint_root",
            )
        self.ray_checked_at = time.time()


def torchrun_command(launcher: TorchrunLauncher, command: list[str], job_uuid: str) -> list[str]:
    """The worker's `python -m recipe JOB_DIR` run as torchrun's ranks. A rank that fails ends
    them all (no restarts: the supervisor decides on retries)."""
    python, flag, module, *args = command
    assert flag == "-m", command
    where = (
        ["--standalone"]
        if launcher.rdzv_endpoint is None
        else [
            *("--rdzv-backend", "c10d", "--rdzv-endpoint", launcher.rdzv_endpoint),
            *("--rdzv-id", job_uuid),
        ]
    )
    return [
        python,
        "-m",
        "torch.distributed.run",
        *where,
        "--nnodes",
        str(launcher.nnodes),
        "--nproc-per-node",
        str(launcher.nproc_per_node),
        "--max-restarts",
        "0",
        "-m",
        module,
        *args,
    ]


def _worker_env(name: str, torchrun: TorchrunLauncher | None) -> dict[str, str]:
    env = {**os.environ, ATTEMPT_ENV: name}
    if torchrun is not None and torchrun.rdzv_endpoint is None:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: the ranks talk over loopback
    return env


ROOT_CAUSE = re.compile(r"exitcode\s*:\s*(-?\d+)")


def root_cause(log_path: Path, code: int) -> int:
    """torchrun's exit is 1 whatever a rank died of; the rank's own code is in the report it
    writes at the end of the log ("Root Cause ... exitcode  : -9")."""
    try:
        text = log_path.read_text(errors="replace")[-20000:]
    except OSError:
        return code
    at = text.rfind("Root Cause")
    found = ROOT_CAUSE.search(text, at) if at >= 0 else None
    return int(found.group(1)) if found else code


def send(proc: Worker, sig: int) -> None:
    """Signal a worker that is still running."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def die_with_parent() -> None:
    """In the worker, before exec: be killed when the server dies, however it dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
