"""`llama-post jobs ...` against the real server."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.apis.test_post_training import FACTS, dataset, request, start
from tests.support import HttpDriver, Server


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llama_post", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={"COLUMNS": "160", "PATH": ""},
    )


def test_jobs_watch_list_status_logs_cancel(server: Server, http_driver: HttpDriver) -> None:
    job_uuid = start(http_driver, request(dataset(http_driver, FACTS))).body["job_uuid"]
    watched = cli("jobs", "watch", job_uuid, "--url", server.url)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"{job_uuid}: completed" in watched.stdout
    assert f"model: ft/{job_uuid}" in watched.stdout
    assert "step 6/6" in watched.stdout

    listed = cli("jobs", "list", "--url", server.url)
    assert job_uuid in listed.stdout and "completed" in listed.stdout
    status = cli("jobs", "status", job_uuid, "--url", server.url)
    assert json.loads(status.stdout)["fine_tuned_model"] == f"ft/{job_uuid}"
    logs = cli("jobs", "logs", job_uuid, "--url", server.url)
    assert "saved checkpoint step-000006" in logs.stdout
    refused = cli("jobs", "cancel", job_uuid, "--url", server.url)
    assert refused.returncode == 1 and "already completed" in refused.stdout
