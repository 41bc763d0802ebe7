"""Workers forked from a process that has already imported what they import.

A worker is `python -m <recipe> JOB_DIR`; importing torch, transformers and peft takes it about
3 s of CPU before its first line runs. The local launcher instead asks a fork server (this
module run as `python -m providers.jobs.forks`, started by the provider at its first job) to fork
a worker: the server has imported those libraries once, and imports each recipe's own imports
before its first fork, so a worker starts at once. The forked worker is what `python -m` would
have run: the recipe as `__main__`, with its argv, environment and folder, its output in the
job's log, in a session of its own, and killed when the fork server dies, which is killed when
the provider's server dies (so a worker never outlives its server, as before).

The two talk over the fork server's stdin and a duplicate of its stdout, a JSON line each way:
`{"argv", "env", "cwd", "log"}` in, `{"pid"}` or `{"error"}` back, then `{"pid", "code"}` once
that worker has exited (its code as `Popen.returncode` gives it: negative for a signal).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ctypes
import importlib
import importlib.util
import json
import logging
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# what every recipe imports, lazily or not; loaded by the fork server when it starts
PRELOAD = (
    "torch",
    "transformers.modeling_utils",
    "transformers.models.llama.modeling_llama",
    "peft",
)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ForkedWorker:
    """A forked worker, as the supervisor uses a process: `pid`, `returncode`, `wait()`,
    `send_signal()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.ended = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        code: int = await asyncio.shield(self.ended)
        return code

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self.ended.set_result(code)


class ForkServer:
    """The provider's side: starts the fork server, asks it for workers, reads their exits."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD) -> None:
        self.preload = preload
        self.proc: asyncio.subprocess.Process | None = None
        # a forked worker, or why none was
        self.replies: asyncio.Queue[ForkedWorker | str] = asyncio.Queue()
        self.workers: dict[int, ForkedWorker] = {}
        self.reader: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def fork(self, argv: list[str], env: dict[str, str], log_path: str) -> ForkedWorker:
        """A worker running `argv` (`python -m module args...` of this interpreter)."""
        async with self.lock:  # one request in flight: the next reply is its answer
            proc = await self._started()
            request = {"argv": argv, "env": env, "cwd": str(Path.cwd()), "log": log_path}
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            reply = await self.replies.get()
            if isinstance(reply, str):
                raise RuntimeError(f"the fork server could not start the worker: {reply}")
            return reply

    async def _started(self) -> asyncio.subprocess.Process:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc
        # this fork server's own: a dead one's error and workers stay with it
        self.replies, self.workers = asyncio.Queue(), {}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "providers.jobs.forks",
            *self.preload,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
            limit=1 << 20,
        )
        self.reader = asyncio.create_task(self._read(self.proc, self.replies, self.workers))
        return self.proc

    async def _read(
        self,
        proc: asyncio.subprocess.Process,
        replies: asyncio.Queue[ForkedWorker | str],
        workers: dict[int, ForkedWorker],
    ) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            message = json.loads(line)
            if "error" in message:
                await replies.put(str(message["error"]))
            elif "code" not in message:  # registered here, before its exit can be read
                forked = workers[int(message["pid"])] = ForkedWorker(int(message["pid"]))
                await replies.put(forked)
            elif (ended := workers.pop(int(message["pid"]), None)) is not None:
                ended.exited(int(message["code"]))
        # the fork server is gone, and its workers with it (they die with it)
        await proc.wait()
        log.warning("the fork server exited (%s); its workers were killed", proc.returncode)
        for worker in workers.values():
            worker.exited(-signal.SIGKILL)
        workers.clear()
        await replies.put(f"the fork server exited ({proc.returncode})")

    async def aclose(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            await self.reader


# -- the fork server -------------------------------------------------------------------------


def _imports_of(module: str) -> list[str]:
    """The modules `module`'s top level imports (read from its source, not run)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _preload(modules: list[str] | tuple[str, ...]) -> None:
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _run_worker(request: dict[str, Any], channel: int, parent: int) -> None:
    """In the forked child of `parent`: become `python -m module args...` and exit as it
    would."""
    code = 1
    try:
        os.close(channel)
        os.setsid()
        _die_with_parent()
        if os.getppid() != parent:  # it died before the signal was set: none would come
            os._exit(1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        sys.stdout.flush()
        sys.stderr.flush()
        out = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import random

        random.seed()  # not the fork server's sequence, shared by every worker
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        module, *args = request["argv"][2:]  # python -m module args...
        sys.argv = [module, *args]
        import runpy

        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    # the replies go on a duplicate of stdout; what the libraries print goes to stderr
    channel = os.dup(1)
    os.dup2(2, 1)
    server = os.getpid()
    _preload(sys.argv[1:])
    loaded: set[str] = set()
    pending = b""
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.2)
        if ready:
            chunk = os.read(stdin, 1 << 20)
            if not chunk:
                return  # the provider is gone; the workers die with this process
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                module = request["argv"][2]
                if module not in loaded:  # its own imports, once, before its first fork
                    _preload(_imports_of(module))
                    loaded.add(module)
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.write(channel, json.dumps({"error": str(exc)}).encode() + b"\n")
                    continue
                if pid == 0:
                    _run_worker(request, channel, server)
                os.write(channel, json.dumps({"pid": pid}).encode() + b"\n")
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            os.write(channel, json.dumps({"pid": pid, "code": code}).encode() + b"\n")


if __name__ == "__main__":
    main()
