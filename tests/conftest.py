from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llama_post import LlamaPostClient
from tests.support import Driver, HttpDriver, LibraryDriver, Server, distribution
from tests.tiny import build_tiny_model, smollm2_tokenizer


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
