"""The openai SDK's fine-tuning workflow, unchanged, against the real server: the pinned latest
release in-process, and a release before 2.30 (which put ids into paths unencoded) in its own
virtual environment."""

from __future__ import annotations

import json

import openai

from tests.compat import openai_evals_flow, openai_flow
from tests.compat.envs import client_python, run_flow
from tests.support import TINY, Server


def test_the_latest_sdk_runs_the_whole_workflow(server: Server) -> None:
    assert openai.__version__ == "3.54.0"
    seen = openai_flow.main(server.url, TINY)
    assert seen["supervised"]["trained_tokens"] > 0
    assert seen["reinforcement"]["steps"] == 2
    assert seen["graders"]["reward"] == 0.4


def test_an_sdk_before_2_30_runs_it_too(server: Server) -> None:
    python = client_python("openai-2.29")
    seen = json.loads(
        run_flow(python, "openai_flow.py", server.url, TINY, "supervised", "preference", "graders")
    )
    assert seen["openai"] == "2.29.0"
    assert seen["supervised"]["job"].startswith("ftjob-blorp-")
    assert seen["graders"]["reward"] == 0.4


def test_the_evals_api_through_both_sdks(server: Server) -> None:
    seen = openai_evals_flow.main(server.url, TINY)
    assert seen["passed"] == 2 and seen["per_criteria"] == {"exact": [2, 2], "close": [2, 2]}
    python = client_python("openai-2.29")
    old = json.loads(run_flow(python, "openai_evals_flow.py", server.url, TINY))
    assert old["openai"] == "2.29.0" and old["passed"] == 2
