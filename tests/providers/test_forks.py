"""The fork server (providers/jobs/forks.py): a forked worker is what `python -m` would have
run (argv, environment, folder, output, exit code, a session of its own), its signals and exits
are read back as a process's, and it dies with the fork server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from providers.jobs.forks import ForkServer

TARGET = "tests.providers.fork_target"


def _lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _until(done: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done()


def test_a_forked_worker_runs_as_python_m_would(tmp_path: Path) -> None:
    async def scenario() -> None:
        forks = ForkServer(preload=("json",))
        env = {**os.environ, "FORK_PROBE": "seen"}
        try:
            ended = await forks.fork([sys.executable, "-m", TARGET, "3"], env, str(tmp_path / "a"))
            assert await ended.wait() == 3 and ended.returncode == 3
            (report,) = _lines(tmp_path / "a")
            assert report["argv"][1:] == ["3"] and report["main"] == "__main__"
            assert report["probe"] == "seen" and report["cwd"] == str(Path.cwd())
            assert report["pid"] == ended.pid and report["session"] is True

            failed = await forks.fork(
                [sys.executable, "-m", TARGET, "raise"], env, str(tmp_path / "b")
            )
            assert await failed.wait() == 1
            assert "ValueError: the worker failed" in (tmp_path / "b").read_text()

            sleeper = await forks.fork(
                [sys.executable, "-m", TARGET, "sleep"], env, str(tmp_path / "c")
            )
            assert await asyncio.to_thread(_until, lambda: bool(_lines(tmp_path / "c")))
            sleeper.send_signal(signal.SIGTERM)
            assert await sleeper.wait() == -signal.SIGTERM

            orphan = await forks.fork(
                [sys.executable, "-m", TARGET, "sleep"], env, str(tmp_path / "d")
            )
            assert await asyncio.to_thread(_until, lambda: bool(_lines(tmp_path / "d")))
            assert forks.proc is not None
            forks.proc.kill()  # the fork server dies: its workers with it
            assert await asyncio.wait_for(orphan.wait(), 30) == -signal.SIGKILL
            gone = await asyncio.to_thread(_until, lambda: not Path(f"/proc/{orphan.pid}").exists())
            assert gone

            again = await forks.fork([sys.executable, "-m", TARGET, "0"], env, str(tmp_path / "e"))
            assert await again.wait() == 0  # a new fork server, started for it
        finally:
            await forks.aclose()

    asyncio.run(scenario())
