"""The python grader's sandbox process: `python -I sandbox_child.py`, standard library only.

It reads one JSON object from stdin (`source`, `pairs` of [item, sample], `cpu_seconds`,
`memory_mb`), shuts itself in, runs the user's `grade(sample, item)` on each pair in turn and
writes one JSON line per pair (`{"score": x}` or `{"error": "..."}`) to the stdout it was given;
the user's own prints go to stderr. The first line says how the network was cut off.

Shutting in, before any user code runs:
- a new user namespace with a new network namespace (`unshare(CLONE_NEWUSER|CLONE_NEWNET)`):
  no interface but a loopback that is down, and no capability in the machine's namespaces, so
  the limits below cannot be raised, even when the server runs as root. Where the kernel
  refuses namespaces, sockets are refused in Python instead (weaker: a C extension could still
  open one), and the first line says `sockets-blocked`;
- `socket` refused in Python in either case;
- RLIMIT_AS (memory), RLIMIT_CPU (reset before each sample to what it has used plus
  `cpu_seconds`; past it the kernel kills the process), RLIMIT_NPROC 0 (no fork), RLIMIT_FSIZE.
The server kills a process that takes longer than its wall limit on one sample.
"""

import ctypes
import json
import math
import os
import resource
import socket
import sys
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MAX_FILE_BYTES = 16 << 20


def cut_network() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    isolated = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError("the python grader has no network")

    for name in ("socket", "create_connection", "socketpair", "fromfd"):
        setattr(socket, name, refused)
    sys.modules["_socket"] = None  # type: ignore[assignment]  # `import _socket` fails
    return "netns" if isolated else "sockets-blocked"


def limit(memory_mb: int, cpu_total: int) -> None:
    memory = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_total, cpu_total))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))


def cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def grade_one(grade: Any, sample: object, item: object) -> dict[str, Any]:
    try:
        value = grade(sample, item)
    except BaseException as e:  # whatever the user's code raises is its result
        return {"error": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return {"error": f"grade() returned {type(value).__name__}, not a number"}
    if not math.isfinite(value):
        return {"error": f"grade() returned {value}"}
    return {"score": float(value)}


def main() -> None:
    job = json.load(sys.stdin)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the user's prints must not mix with the results
    sys.stdout = sys.stderr

    def answer(line: dict[str, Any]) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    answer({"sandbox": cut_network()})
    per_sample = float(job["cpu_seconds"])
    limit(int(job["memory_mb"]), math.ceil(cpu_used() + per_sample * (len(job["pairs"]) + 1)))
    namespace = {"__name__": "grader"}
    try:
        exec(compile(job["source"], "<grader>", "exec"), namespace)
        grade = namespace["grade"]
    except BaseException as e:
        failed = {"error": f"the source failed to load: {type(e).__name__}: {e}"}
        for _ in job["pairs"]:
            answer(failed)
        return
    for item, sample in job["pairs"]:
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(
            resource.RLIMIT_CPU, (min(math.ceil(cpu_used() + per_sample), hard), hard)
        )
        answer(grade_one(grade, sample, item))


main()
