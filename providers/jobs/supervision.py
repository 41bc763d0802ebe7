"""The supervision of running jobs: the queue (up to `max_concurrent_jobs` workers), each
attempt's start and end, the watchdog (stalls, a job's own time and cost limits), the reasons
a worker failed, retries of the machine's failures from the newest intact checkpoint, cancel,
and what a server that stops and starts again does with the jobs it was running."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from llama_post import telemetry
from llama_post.apis.post_training import JobProgress, JobStatus, TrainingRequest
from llama_post.apis.post_training.access import Grant, InferenceAccess
from llama_post.errors import InvalidRequestError
from providers.jobs.checkpoints import JobCheckpoints
from providers.jobs.config import LocalJobsConfig
from providers.jobs.failures import failure, failure_class, intact, out_of_memory
from providers.jobs.folder import (
    EXIT_CANCELLED,
    EXIT_LOST,
    EXIT_NONFINITE,
    INFERENCE_KEY_ENV,
    INFERENCE_URL_ENV,
    read_heartbeat,
)
from providers.jobs.launch import Launch, Worker, send
from providers.jobs.ray import RayJob
from providers.jobs.store import TERMINAL, JobStore
from providers.jobs.tracking import Tracking
from providers.jobs.trainer import Trainer
from providers.training.methods import method_of
from providers.training.reinforce import score_models

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        config: LocalJobsConfig,
        provider_id: str,
        store: JobStore,
        launch: Launch,
        trainer: Trainer,
        tracking: Tracking,
        checkpoints: JobCheckpoints,
    ) -> None:
        self.config = config
        self.provider_id = provider_id
        self.store = store
        self.launch = launch
        self.trainer = trainer
        self.tracking = tracking
        self.checkpoints = checkpoints
        self.workers: dict[str, Worker] = {}
        self.monitors: dict[str, asyncio.Task[None]] = {}
        self.cancelling: set[str] = set()
        self.stalled: dict[str, str] = {}  # job -> why the watchdog killed its worker
        self.overrun: dict[str, str] = {}  # job -> the limit of its own it ran past
        self.launched_at: dict[str, float] = {}
        self.running: dict[str, TrainingRequest] = {}  # read once a launch, for the watchdog
        self.steps_seen: dict[str, int] = {}  # job -> the highest step counted in the metrics
        self.attempt_names: dict[str, str] = {}  # job -> its running attempt's ATTEMPT_ENV
        self.inference_access: InferenceAccess | None = None  # the stack's, once it sets it
        self.grants: dict[str, Grant] = {}  # job -> its running attempt's way to inference
        self.stopping = False
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        """Take up the jobs that were running when the server stopped, then run the queue and
        the watchdog."""
        interrupted = self.store.ids(JobStatus.in_progress)
        for job_uuid in interrupted:
            attempts = self.store.attempts(job_uuid)
            if await self._reattach(job_uuid, attempts):
                continue
            if attempts and attempts[-1].get("ended_at") is None:
                # the server did not stop this worker itself (it crashed, or was killed): that
                # counts against the job's retries; a worker stopped with the server does not
                reason = "the server stopped under it (it crashed or was killed)"
                self.store.end_attempt(job_uuid, reason, machine=True)
                self._retry_or_fail(job_uuid, reason)
            else:
                self.store.note(job_uuid, "the server started again; the job resumes")
                self.store.reschedule(job_uuid)
        if interrupted:
            log.info("%d job(s) were running when the server stopped", len(interrupted))
        for job_uuid in interrupted:  # out of retries: its trackers' runs end failed
            await self.tracking.end(job_uuid, self.stopping)
        self._scheduler = asyncio.create_task(self._schedule())
        self._watchdog = asyncio.create_task(self._watch())
        self._wake.set()

    async def _reattach(self, job_uuid: str, attempts: list[dict[str, Any]]) -> bool:
        """Follow a Ray job the previous server submitted, if Ray still knows it."""
        worker = await self.launch.find(job_uuid, attempts)
        if worker is None:
            return False
        self.store.note(
            job_uuid, f"the server started again; it follows Ray job {worker.submission_id}"
        )
        self._follow(job_uuid, f"{job_uuid}/{attempts[-1]['attempt']}", worker)
        return True

    def _follow(self, job_uuid: str, name: str, worker: Worker) -> None:
        """Supervise a started worker: the watchdog watches it, its monitor waits for it."""
        self.attempt_names[job_uuid] = name
        self.steps_seen.setdefault(job_uuid, self._progress_step(job_uuid))
        self.launched_at[job_uuid] = time.time()
        self.running[job_uuid] = self.store.request(job_uuid)
        self.tracking.follow(job_uuid, self.running[job_uuid])
        self.workers[job_uuid] = worker
        self.monitors[job_uuid] = asyncio.create_task(self._monitor(job_uuid, worker))

    async def shutdown(self) -> None:
        """Stop workers without failing their jobs: they resume at the next start."""
        self.stopping = True
        for task in (self._scheduler, self._watchdog):
            if task:
                task.cancel()
        ray_jobs = {j for j, w in self.workers.items() if isinstance(w, RayJob)}
        for job_uuid in ray_jobs:  # they go on in the cluster; the next server re-attaches
            self.monitors[job_uuid].cancel()
            self.workers.pop(job_uuid)
        for job_uuid in list(self.workers):
            self.store.end_attempt(
                job_uuid, "the server was stopped; the job resumes when it starts"
            )
        for proc in list(self.workers.values()):
            send(proc, signal.SIGTERM)
        if self.monitors:
            await asyncio.wait(
                list(self.monitors.values()), timeout=self.config.cancel_grace_seconds
            )
        for proc in list(self.workers.values()):
            send(proc, signal.SIGKILL)
        await self.launch.aclose()

    async def cancel(self, job_uuid: str) -> None:
        """Stop the job: SIGTERM to its worker, SIGKILL after `cancel_grace_seconds`."""
        proc = self.workers.get(job_uuid)
        if proc is None:
            self.finish(job_uuid, JobStatus.cancelled)
            await self.tracking.end(job_uuid, self.stopping)
            return
        self.cancelling.add(job_uuid)
        send(proc, signal.SIGTERM)
        monitor = self.monitors.get(job_uuid)
        if monitor is not None:
            done, _ = await asyncio.wait({monitor}, timeout=self.config.cancel_grace_seconds)
            if not done:
                send(proc, signal.SIGKILL)
                await monitor

    # -- running jobs --------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.workers) < self.config.max_concurrent_jobs and not self.stopping:
                job_uuid = self.store.next_scheduled()
                if job_uuid is None:
                    break
                await self._launch(job_uuid)

    async def _launch(self, job_uuid: str) -> None:
        folder = self.store.folder(job_uuid)
        folder.heartbeat.unlink(missing_ok=True)  # evidence of this attempt only
        attempt = len(self.store.attempts(job_uuid)) + 1
        command = self.trainer.worker(self.store.request(job_uuid), folder.path)
        resources: dict[str, Any] = {
            "device": self.launch.device(),
            "dtype": self.store.spec(job_uuid).dtype,
            "torch_threads": self.config.torch_threads,
            "launcher": self.launch.launcher.type,
            "ranks": self.store.spec(job_uuid).ranks,
        }
        try:
            env = await self._grant(job_uuid)
        except InvalidRequestError as exc:
            self.finish(job_uuid, JobStatus.failed, error=str(exc))
            return
        proc = await self.launch.start(job_uuid, attempt, command, resources, env)
        if proc is None:  # the cluster refused it for now: the job waits its turn
            self._revoke(job_uuid)
            await asyncio.sleep(self.config.watch_interval_seconds)
            self._wake.set()
            return
        if not self.store.started(job_uuid, resources):  # cancelled while it was starting
            self._revoke(job_uuid)
            send(proc, signal.SIGKILL)
            await proc.wait()
            return
        self.store.begin_attempt(job_uuid, resources.get("ray_submission_id"))
        self._follow(job_uuid, f"{job_uuid}/{attempt}", proc)

    async def _grant(self, job_uuid: str) -> dict[str, str]:
        """The worker's way to this server's inference, where its grader calls a model there:
        a grant for this attempt alone, in the worker's environment (never its folder)."""
        grader = method_of(self.store.request(job_uuid)).grader
        if grader is None or not score_models(grader(self.store.request(job_uuid))):
            return {}
        if self.inference_access is None:
            raise InvalidRequestError("the job's grader calls this server's inference, unserved")
        grant = self.grants[job_uuid] = await self.inference_access.grant(job_uuid)
        return {
            INFERENCE_URL_ENV: grant.url,
            **({INFERENCE_KEY_ENV: grant.key} if grant.key else {}),
        }

    def _revoke(self, job_uuid: str) -> None:
        grant = self.grants.pop(job_uuid, None)
        if grant is not None and self.inference_access is not None:
            self.inference_access.revoke(grant)

    async def _monitor(self, job_uuid: str, proc: Worker) -> None:
        code = await proc.wait()
        if isinstance(proc, RayJob) and proc.message and code != 0:
            self.store.note(
                job_uuid, f"Ray job {proc.submission_id} ended {proc.state}: {proc.message}"
            )
        code = self.launch.exit_code(job_uuid, code)
        await self.tracking.flush(job_uuid)  # every step reaches the trackers before the status
        stalled = self.stalled.pop(job_uuid, None)
        overrun = self.overrun.pop(job_uuid, None)
        self._count_steps(job_uuid)
        try:
            if overrun is not None:  # the job's own limit: not retried
                self.store.end_attempt(job_uuid, overrun)
                self.finish(job_uuid, JobStatus.failed, error=overrun)
            elif job_uuid in self.cancelling:
                self.store.end_attempt(job_uuid, "cancelled")
                self.finish(job_uuid, JobStatus.cancelled)
            elif self.stopping:
                pass  # left in_progress: it resumes at the next start
            elif code == 0:
                self.store.end_attempt(job_uuid, None)
                model_id, note = await self.checkpoints.publish(job_uuid)
                self.finish(job_uuid, JobStatus.completed, error=note, fine_tuned_model=model_id)
            else:
                reason, machine = self._ending(job_uuid, code, stalled)
                kind = failure_class(code, stalled is not None, reason)
                telemetry.WORKER_FAILURES.labels(self.provider_id, kind).inc()
                self.store.end_attempt(job_uuid, reason, machine)
                if machine:
                    self._retry_or_fail(job_uuid, reason)
                else:
                    self.finish(job_uuid, JobStatus.failed, error=reason)
        except Exception as exc:
            log.exception("job %s could not be finished", job_uuid)
            self.finish(job_uuid, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.workers.pop(job_uuid, None)
            self.monitors.pop(job_uuid, None)
            self.launched_at.pop(job_uuid, None)
            self.running.pop(job_uuid, None)
            self.attempt_names.pop(job_uuid, None)
            self._revoke(job_uuid)
            self.cancelling.discard(job_uuid)
            self._wake.set()
        await self.tracking.end(job_uuid, self.stopping)

    def finish(
        self,
        job_uuid: str,
        status: JobStatus,
        error: str | None = None,
        fine_tuned_model: str | None = None,
    ) -> None:
        self.store.set(job_uuid, status, error=error, fine_tuned_model=fine_tuned_model)
        if status in TERMINAL:
            self.steps_seen.pop(job_uuid, None)

    # -- the watchdog --------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Kill a worker whose last heartbeat (its own clock) is older than its phase allows.
        Before its first heartbeat, the attempt's start is the evidence."""
        while True:
            await asyncio.sleep(self.config.watch_interval_seconds)
            self.tracking.tick(self.workers)
            now = time.time()
            for job_uuid, proc in list(self.workers.items()):
                self._count_steps(job_uuid)
                if job_uuid in self.stalled or job_uuid in self.cancelling:
                    continue
                if job_uuid in self.overrun:
                    continue
                over = self._over_limits(job_uuid, now)
                if over is not None:
                    self.overrun[job_uuid] = over
                    self.store.note(job_uuid, over)
                    send(proc, signal.SIGKILL)
                    continue
                beat = read_heartbeat(self.store.folder(job_uuid).heartbeat)
                ours = beat is not None and (
                    beat.get("attempt") == self.attempt_names.get(job_uuid)
                    or (proc.pid is not None and beat.get("pid") == proc.pid)
                )  # a heartbeat names its attempt (the worker may be torchrun's or Ray's)
                if beat is None or not ours:
                    beat = {"time": self.launched_at.get(job_uuid, now), "phase": "loading"}
                phase = str(beat.get("phase"))
                limit, why = self._stall_limit(job_uuid, phase, beat.get("slowest_step"))
                quiet = now - float(beat["time"])
                if quiet <= limit:
                    continue
                where = f" at step {beat['step']}" if beat.get("step") is not None else ""
                reason = (
                    f"the worker stalled in its {phase} phase{where}: no progress for "
                    f"{quiet:.0f} s (the limit is {limit:g} s{why})"
                )
                self.stalled[job_uuid] = reason
                self.store.note(job_uuid, reason)
                send(proc, signal.SIGKILL)  # a stopped or wedged process ignores SIGTERM

    def _progress_step(self, job_uuid: str) -> int:
        try:
            progress = self.store.folder(job_uuid).progress.read_text()
            return JobProgress.model_validate_json(progress).step
        except (OSError, ValueError):
            return 0

    def _count_steps(self, job_uuid: str) -> None:
        """Add the steps a worker completed since the last look to the step counter; a resumed
        attempt's replay of steps already counted adds nothing."""
        step = self._progress_step(job_uuid)
        seen = self.steps_seen.get(job_uuid, step)
        if step > seen:
            telemetry.JOB_STEPS.labels(self.provider_id).inc(step - seen)
            self.steps_seen[job_uuid] = step

    def _over_limits(self, job_uuid: str, now: float) -> str | None:
        """The job's max_wall_seconds or max_cost, where its workers' running time (over all
        attempts) has passed it."""
        limits = self.running[job_uuid].supervision
        if limits.max_wall_seconds is None and limits.max_cost is None:
            return None
        attempts = self.store.attempts(job_uuid)
        ran = sum((a.get("ended_at") or now) - a["started_at"] for a in attempts)
        if limits.max_wall_seconds is not None and ran > limits.max_wall_seconds:
            return (
                f"stopped: its workers ran {ran:.0f} s, past supervision.max_wall_seconds "
                f"{limits.max_wall_seconds:g}"
            )
        price = self.config.price_per_device_hour
        if (
            limits.max_cost is not None
            and price is not None
            and ran / 3600 * price > limits.max_cost
        ):
            return (
                f"stopped: {ran:.0f} s at {price:g} an hour cost {ran / 3600 * price:.4g}, past "
                f"supervision.max_cost {limits.max_cost:g}"
            )
        return None

    def _stall_limit(self, job_uuid: str, phase: str, slowest: Any) -> tuple[float, str]:
        """How long the worker may show no progress in `phase`, and why when it is not a set
        window: the job's own windows, else the provider's, which in training, once a step has
        completed, shrinks to `stall_step_factor` times the slowest step (with a floor), so a
        stall on a fast step is caught quickly and a slow first step is not taken for one."""
        limits: dict[str, float] = {str(k): v for k, v in self.config.stall_seconds.items()}
        asked = self.running[job_uuid].supervision.stall_seconds
        if isinstance(asked, dict):
            own = {str(k): v for k, v in asked.items()}
            if phase in own:
                return own[phase], ""
        elif asked is not None:
            return asked, ""
        limit = limits.get(phase, max(limits.values()))
        if phase != "training" or not isinstance(slowest, int | float):
            return limit, ""
        return paced_window(
            limit, float(slowest), self.config.stall_step_factor, self.config.stall_floor_seconds
        )

    # -- failures and retries ------------------------------------------------------------------

    def _ending(self, job_uuid: str, code: int, stalled: str | None) -> tuple[str, bool]:
        """Why a worker ended, and whether that was the machine's fault (retried) rather than
        the job's (not)."""
        reason = failure(self.store.folder(job_uuid).log, code, self.store.checkpoint_dir(job_uuid))
        if stalled:
            return stalled, True
        if code == EXIT_NONFINITE:
            return reason, False
        if out_of_memory(code, reason):
            lighter = self.trainer.lighter(self.store.spec(job_uuid))
            if lighter is None:
                return reason, False  # the retry would need as much memory as this one did
            self.store.folder(job_uuid).spec.write_text(lighter.model_dump_json(indent=2))
            return f"{reason}; the retry recomputes activations to use less", True
        if code == EXIT_LOST:  # the launcher lost it (a Ray job's driver or node)
            return f"the launcher lost the worker{intact(reason)}", True
        if code == EXIT_CANCELLED:  # stopped by a SIGTERM nobody here sent
            return f"the worker was stopped from outside (SIGTERM){intact(reason)}", True
        if code < 0:  # killed by a signal nobody here sent: the worker was lost
            return (
                f"the worker was lost (signal {signal.Signals(-code).name}){intact(reason)}",
                True,
            )
        return reason, False

    def _retry_or_fail(self, job_uuid: str, reason: str) -> None:
        """Schedule the job again (it resumes from its newest intact checkpoint) while its
        retries last; fail it once they are spent."""
        attempts = self.store.attempts(job_uuid)
        retries = sum(1 for a in attempts if a.get("machine"))
        allowed = self.store.request(job_uuid).supervision.max_retries
        if retries > allowed:
            tried = f"after {allowed} retr{'y' if allowed == 1 else 'ies'}" if allowed else ""
            self.store.note(
                job_uuid, f"giving up {tried or 'at once (max_retries is 0)'}: {reason}"
            )
            self.finish(
                job_uuid,
                JobStatus.failed,
                error=f"{reason} (attempt {len(attempts)}; giving up {tried or 'at once'})",
            )
            return
        self.store.note(
            job_uuid,
            f"attempt {len(attempts)} ended: {reason}; retrying (retry {retries} of {allowed})",
        )
        self.store.reschedule(job_uuid, only_in_progress=True)
        telemetry.WORKER_RESTARTS.labels(self.provider_id).inc()
        self._wake.set()


def paced_window(
    limit: float, slowest: float, factor: float | None, floor: float
) -> tuple[float, str]:
    """A training window that follows the job's pace: `factor` times its slowest step, at least
    `floor`, at most the set `limit`; and why, when it is not `limit`."""
    if factor is None or max(floor, factor * slowest) >= limit:
        return limit, ""
    paced = max(floor, factor * slowest)
    return paced, f": {factor:g} times its slowest step, {slowest:.3g} s, at least {floor:g} s"
