"""The python grader: refused unless enabled; a batch in one sandbox process; a sample that
loops, sleeps, allocates too much or reaches for the network is that sample's error and the
samples after it are still graded."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from llama_post.apis.post_training.graders import PythonGrader
from llama_post.errors import InvalidRequestError
from llama_post.graders import GraderRunner, GraderSettings, Sample
from llama_post.graders.python import PythonSandbox

ENABLED = GraderSettings(
    python_enabled=True, python_cpu_seconds=1, python_memory_mb=256, python_timeout_s=20
)
SOURCE = """
import time

graded = 0

def grade(sample, item):
    global graded
    graded += 1
    kind = item["kind"]
    if kind == "count":
        return graded
    if kind == "match":
        return 1.0 if sample["output_text"].strip() == item["answer"] else 0.0
    if kind == "loop":
        while True:
            pass
    if kind == "sleep":
        time.sleep(3600)
    if kind == "allocate":
        return len(bytearray(1 << 30))
    if kind == "raise":
        raise ValueError("no answer")
    return "not a number"
"""


def grader(settings: GraderSettings = ENABLED, source: str = SOURCE) -> GraderRunner:
    return GraderRunner(PythonGrader(type="python", name="py", source=source), settings)


def rows(*kinds: str) -> list[tuple[dict[str, Any], Sample]]:
    return [({"kind": k, "answer": "42"}, Sample(" 42")) for k in kinds]


def test_refused_unless_the_distribution_enables_it() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        grader(GraderSettings())
    assert refused.value.param == "grader.type"
    assert "graders.python.enabled" in refused.value.message


@pytest.mark.parametrize(
    ("source", "field"),
    [("def grade(sample, item):\n  return (", "grader.source"), ("x = 1", "grader.source")],
)
def test_source_without_a_grade_function_is_refused(source: str, field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        grader(source=source)
    assert refused.value.param == field


def test_a_batch_runs_in_one_process_and_errors_stay_per_sample() -> None:
    results = grader().grade_many(rows("count", "match", "raise", "other", "count"))
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 0.0, 5.0]  # one process counted all
    assert [r.error_kind for r in results] == [None, None, "python_runtime", "python_runtime", None]
    assert results[2].error == "ValueError: no answer"
    assert results[3].error == "grade() returned str, not a number"


def test_a_sample_that_loops_hits_the_cpu_limit() -> None:
    results = grader().grade_many(rows("loop", "match"))
    assert (results[0].score, results[0].error_kind) == (0.0, "python_server")
    assert results[0].error is not None and "1 s of CPU" in results[0].error
    assert (results[1].score, results[1].error) == (1.0, None)  # in a fresh process


def test_a_sample_that_sleeps_hits_the_wall_limit() -> None:
    quick = GraderSettings(python_enabled=True, python_timeout_s=1)
    results = grader(quick).grade_many(rows("sleep", "count"))
    assert (results[0].error_kind, results[0].error) == (
        "unresponsive",
        "the sample took longer than 1 s",
    )
    assert (results[1].score, results[1].error) == (1.0, None)  # the first of a new process


def test_a_sample_that_allocates_too_much_hits_the_memory_limit() -> None:
    results = grader().grade_many(rows("allocate", "count"))
    assert (results[0].score, results[0].error) == (0.0, "MemoryError")
    assert results[1].score == 2.0  # the same process goes on


NETWORK = """
import ctypes, socket, struct

def grade(sample, item):
    if item["how"] == "socket":
        socket.create_connection(("127.0.0.1", item["port"]), timeout=2)
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)  # under Python's own socket module
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    address = struct.pack("!HH4s8x", socket.AF_INET, item["port"], bytes([127, 0, 0, 1]))
    if libc.connect(fd, address, len(address)) != 0:
        raise OSError(ctypes.get_errno(), "connect failed")
    return 1.0
"""


def test_a_sample_that_opens_a_socket_fails_and_reaches_nothing() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        runner = grader(source=NETWORK)
        results = runner.grade_many(
            [({"how": how, "port": port}, Sample("")) for how in ("socket", "libc")]
        )
        assert results[0].score == 0.0
        assert results[0].error == "PermissionError: the python grader has no network"
        isolation = runner.kind.isolation if isinstance(runner.kind, PythonSandbox) else None
        assert isolation in ("netns", "sockets-blocked")
        if isolation == "netns":  # a network namespace of its own: no route even below Python
            assert results[1].score == 0.0
            assert results[1].error is not None and "OSError" in results[1].error
            with pytest.raises(TimeoutError):
                listener.accept()  # nobody connected
