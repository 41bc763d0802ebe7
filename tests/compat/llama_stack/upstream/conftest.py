"""The fixtures Llama Stack's integration tests take, pointed at a llama-post server.

Upstream's (`tests/integration/conftest.py`, `tests/integration/fixtures/common.py`) start a
Llama Stack server or take a running one's URL (`--stack-config=http://...`); these take the URL
of the llama-post server that `tests/compat/test_llama_stack_upstream.py` started, and build the
clients as upstream's fixtures do for a server URL at each tag. This file runs in the client's
own environment (Python 3.12, llama-stack-client and llama-stack at the same release).
"""

import llama_stack_client as llama_stack_client_package
import pytest
from llama_stack_client import LlamaStackClient
from openai import OpenAI


def pytest_addoption(parser):
    parser.addoption("--stack-config", required=True, help="the llama-post server's URL")


def _release():
    return tuple(int(p) for p in llama_stack_client_package.__version__.split(".")[:2])


@pytest.fixture(scope="session")
def llama_stack_client(request):
    return LlamaStackClient(base_url=request.config.getoption("--stack-config"))


@pytest.fixture(scope="session")
def openai_client(llama_stack_client):
    if _release() >= (0, 7):  # fixtures/common.py at v0.7.0
        client = OpenAI(
            base_url=f"{llama_stack_client.base_url}/v1", api_key="fake", max_retries=0, timeout=30.0
        )
        yield client
        client.close()
    else:  # at v0.2.23: OpenAI's routes under /v1/openai/v1
        yield OpenAI(base_url=f"{llama_stack_client.base_url}/v1/openai/v1", api_key="fake")
