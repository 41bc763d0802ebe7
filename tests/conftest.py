from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from llama_post import LlamaPostClient
from tests.support import Driver, HttpDriver, LibraryDriver, Server, distribution
from tests.tiny import build_tiny_model, smollm2_tokenizer

# Llama Stack's own tests: they run in their client environments (tests/compat/llama_stack)
collect_ignore = ["compat/llama_stack/upstream"]
# The tests run offline: what they start reads no model or dataset hub (a `huggingface://`
# dataset source fails at once, as where the Hub cannot be reached)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tiny models and adapters are built; the inference provider may read it."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tokenizer(pytestconfig: pytest.Config) -> Any:
    return smollm2_tokenizer(pytestconfig.cache.mkdir("smollm2-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path, tokenizer: Any) -> Path:
    return build_tiny_model(models_dir / "tiny", tokenizer)


@pytest.fixture(scope="session")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="session")
def server(server_home: Path, tiny_model: Path) -> Iterator[Server]:
    """One real server for the session; tests keep apart by using ids of their own."""
    srv = Server(distribution(server_home, tiny_model), server_home).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def library_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="session")
def library(library_home: Path, tiny_model: Path) -> Iterator[LlamaPostClient]:
    with LlamaPostClient(distribution(library_home, tiny_model)) as client:
        yield client


@pytest.fixture(scope="session")
def http_driver(server: Server) -> Iterator[HttpDriver]:
    driver = HttpDriver(server.url)
    yield driver
    driver.http.close()


@pytest.fixture(scope="module", params=["http", "library"])
def api(request: pytest.FixtureRequest) -> Driver:
    """The same API calls, over HTTP to the real server and through the library client.

    Module-scoped, so a module's fixtures can share what is costly (a trained job) per driver.
    A test whose library run would prove nothing new (the route runs through the library in
    another test; only the body differs) takes `@HTTP_ONLY` (tests/support.py)."""
    if request.param == "http":
        driver: Driver = request.getfixturevalue("http_driver")
        return driver
    return LibraryDriver(request.getfixturevalue("library"))


@pytest.fixture
def import_dir(request: pytest.FixtureRequest, api: Driver) -> Path:
    """The folder the datasets provider of `api`'s stack may read local files from."""
    home: Path = request.getfixturevalue("server_home" if api.name == "http" else "library_home")
    return home / "import"


CONFORMANCE = "tests/conformance/test_distributions.py"


def xdist_group(nodeid: str) -> str:
    """The group a test runs in under pytest-xdist (`make test` runs two workers): a worker runs
    a whole group, in order, so a module's module-scoped servers start once. A module is a
    group; the conformance suite is a group per target, each with its own servers; whatever
    starts a Ray head is one group, since `ray stop` ends every Ray process on the machine."""
    path, _, name = nodeid.partition("::")
    target = name.rpartition("[")[2].rstrip("]") if path == CONFORMANCE and "[" in name else None
    if path == "tests/server/test_ray_launcher.py" or target == "cluster":
        return "ray"
    return f"{path}[{target}]" if target else path


class ByGroup(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no types
    """xdist's scope scheduling with `xdist_group` as the scope (its own `loadgroup` reads a
    mark through the node id, which pytest 9 no longer lets a plugin rewrite)."""

    def _split_scope(self, nodeid: str) -> str:
        return xdist_group(nodeid)


def pytest_configure(config: pytest.Config) -> None:
    """Under N xdist workers, each worker and every process its tests start (servers, training
    workers, engines) gets the machine's cores divided by N as its OpenMP threads, unless the
    environment already says. Two workers whose processes each spread over every core spend
    most of their time waiting on each other at OpenMP's barriers: measured here (2 cores), the
    SmolLM2 fine-tune next to the mixed-precision tests took 62 s with torch's default and 42 s
    with one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # already imported: it read the variable at its start
            sys.modules["torch"].set_num_threads(threads)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With LLAMA_POST_TIMELINE naming a file, each test phase appends a line to it: worker,
    start, stop (epoch seconds), phase, outcome, node id. Read it to see what ran beside what."""
    path = os.environ.get("LLAMA_POST_TIMELINE")
    if path and not hasattr(report, "node"):  # a worker's own report, not xdist's relay of it
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        times = f"{report.start:.1f} {report.stop:.1f}"
        line = f"{worker} {times} {report.when} {report.outcome} {report.nodeid}\n"
        with Path(path).open("a") as f:
            f.write(line)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ByGroup:
    return ByGroup(config, log)


# Default-lane groups measured at over 150 s in a full run (LLAMA_POST_TIMELINE, 2026-12-07):
# one of them started last ran on alone for 260 s while the other worker sat idle.
HEAVY = (
    "tests/server/test_training_durability.py",
    "tests/server/test_supervision.py",
    "tests/server/test_estimates.py",
    "tests/server/test_launchers.py",
    "tests/server/test_trackers.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups holding a slow-lane test run first, then the heavy ones of the default lane (stably,
    each in its own order), so the longest start early rather than run on alone at the end."""
    slow = {xdist_group(item.nodeid) for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        group = xdist_group(item.nodeid)
        return 0 if group in slow else 1 if group in HEAVY else 2

    items.sort(key=rank)
