"""llama-stack-client's datasets, post-training and chat calls, unchanged, against the real
server: 0.2.23 and 0.7.0, each in its own Python 3.12 virtual environment."""

from __future__ import annotations

import json

import pytest

from tests.compat.envs import client_python, python312, run_flow
from tests.support import TINY, Server


@pytest.mark.parametrize("release", ["0.2.23", "0.7.0"])
def test_llama_stack_client_runs_the_whole_workflow(server: Server, release: str) -> None:
    python = client_python(f"llama-stack-client-{release}", python312())
    seen = json.loads(run_flow(python, "llama_stack_flow.py", server.url, TINY))
    assert seen["llama_stack_client"] == release
    assert seen["chunks"] >= 2
    assert len(seen["dpo_jobs"]) == 2  # dialog and instruct


@pytest.mark.parametrize("release", ["0.2.23", "0.7.0"])
def test_llama_stack_client_runs_the_eval_family(server: Server, release: str) -> None:
    python = client_python(f"llama-stack-client-{release}", python312())
    seen = json.loads(run_flow(python, "llama_stack_eval_flow.py", server.url, TINY))
    assert seen["llama_stack_client"] == release and seen["accuracy"] == 0.5
