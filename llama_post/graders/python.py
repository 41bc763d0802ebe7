"""`python`: the user's `grade(sample, item)`, run in a sandbox process (`sandbox_child.py`).

Refused unless the distribution enables it (run.yaml `graders.python.enabled`). A batch runs in
one process; a sample that outlives its wall limit (`python_timeout_s`, the process is killed),
its CPU time (`python_cpu_seconds`: the kernel kills it) or that crashes the process is that
sample's error, and the samples after it run in a fresh process. Memory is capped per process
(`python_memory_mb`): an allocation past it is a `MemoryError` for that sample.
"""

from __future__ import annotations

import ast
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from llama_post.apis.post_training.graders import PythonGrader
from llama_post.errors import InvalidRequestError
from llama_post.graders.results import GradeResult, GraderSettings, Pair
from llama_post.graders.templates import ErrorKind

CHILD = Path(__file__).with_name("sandbox_child.py")
IMAGE_TAGS = (None, "default")
STDERR_TAIL = 2000


class PythonSandbox:
    def __init__(self, grader: PythonGrader, where: str, settings: GraderSettings) -> None:
        if not settings.python_enabled:
            raise InvalidRequestError(
                f"{where}.type: the python grader is not enabled on this server "
                "(run.yaml `graders.python.enabled`); use another grader",
                param=f"{where}.type",
            )
        if grader.image_tag not in IMAGE_TAGS:
            raise InvalidRequestError(
                f"{where}.image_tag: only this server's Python runs graders; leave it out",
                param=f"{where}.image_tag",
            )
        try:
            tree = ast.parse(grader.source, "<grader>")
        except SyntaxError as e:
            raise InvalidRequestError(
                f"{where}.source: line {e.lineno}: {e.msg}", param=f"{where}.source"
            ) from e
        if not any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body):
            raise InvalidRequestError(
                f"{where}.source: define `def grade(sample, item) -> float` at the top level",
                param=f"{where}.source",
            )
        self.source = grader.source
        self.settings = settings
        self.isolation: str | None = None  # how the last process was cut off from the network

    def grade_many(self, pairs: Sequence[Pair]) -> list[GradeResult]:
        results: list[GradeResult] = []
        while len(results) < len(pairs):  # each process grades at least one more
            results += self._run(pairs[len(results) :])
        return results

    def _run(self, pairs: Sequence[Pair]) -> list[GradeResult]:
        """Results for the first pairs, in order: all of them, or those before the sample that
        ended the process, which is the last one, with the reason as its error."""
        job = {
            "source": self.source,
            "pairs": [
                [dict(item), {"output_text": s.output_text, "output_json": s.output_json}]
                for item, s in pairs
            ],
            "cpu_seconds": self.settings.python_cpu_seconds,
            "memory_mb": self.settings.python_memory_mb,
        }
        with tempfile.TemporaryDirectory(prefix="grader-") as home, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(
                [sys.executable, "-I", str(CHILD)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=home,
                env={"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": home},
            )
            results: list[GradeResult] = []
            try:
                why = self._exchange(process, job, results, len(pairs))
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
                process.stdout.close()  # type: ignore[union-attr]
            if why is None:
                return results
            kind: ErrorKind = "unresponsive" if why else "python_server"
            if why == "":
                why = _exit_reason(process.returncode, self.settings)
                err.seek(0)
                tail = err.read().decode(errors="replace")[-STDERR_TAIL:].strip()
                if tail:
                    why += f"; its output ended: {tail}"
            return [*results, GradeResult(0.0, {}, why, kind)]

    def _exchange(
        self,
        process: subprocess.Popen[bytes],
        job: dict[str, Any],
        results: list[GradeResult],
        wanted: int,
    ) -> str | None:
        """Send the job and read results until `wanted`: None when all came, else why not
        ("" when the process ended: its exit status tells why)."""
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(job).encode())
            process.stdin.close()
        except BrokenPipeError:
            return ""
        lines = _lines(process.stdout, self.settings.python_timeout_s)
        for line in lines:
            if line is None:
                return f"the sample took longer than {self.settings.python_timeout_s} s"
            answer = json.loads(line)
            if "sandbox" in answer:
                self.isolation = answer["sandbox"]
                continue
            error = answer.get("error")
            kind: ErrorKind | None = None if error is None else "python_runtime"
            results.append(GradeResult(float(answer.get("score", 0.0)), {}, error, kind))
            if len(results) == wanted:
                return None
        return ""


def _lines(stream: IO[bytes], timeout_s: float) -> Any:
    """The stream's lines, then None if the next took longer than `timeout_s`; ends at EOF."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    fd, buffer = stream.fileno(), b""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line
                deadline = time.monotonic() + timeout_s
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                yield None
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buffer += chunk
    finally:
        selector.close()


def _exit_reason(code: int | None, settings: GraderSettings) -> str:
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        return f"the sample used more than {settings.python_cpu_seconds} s of CPU"
    if code is not None and code < 0:
        return f"the grader's process was killed by {signal.Signals(-code).name}"
    return f"the grader's process exited with status {code}"
