"""The examples in docs/ run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import TINY, Server, distribution

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_the_curl_walkthrough(server: Server) -> None:
    done = subprocess.run(
        ["bash", str(EXAMPLES / "walkthrough.sh"), server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert '"row_count":3' in done.stdout
    assert '"has_more":true' in done.stdout
    assert "row 1 field completion: Field required" in done.stdout


def test_the_library_quickstart(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(distribution(tmp_path)))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "library_quickstart.py"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert "registered" in done.stdout and "with 1 row(s)" in done.stdout
    assert "refused: 1 of 1 rows are invalid: row 1 field completion" in done.stdout


def _example(name: str, server: Server, timeout: float) -> subprocess.CompletedProcess[str]:
    """`docs/examples/<name>` run against `server`'s tiny model; it must succeed."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), server.url, TINY],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_structured_output_example(server: Server) -> None:
    done = _example("structured_output.py", server, timeout=60)
    obj, yes_no, distance = done.stdout.splitlines()
    assert obj.startswith("{'city': ") and yes_no in ("yes", "no")
    assert re.fullmatch(r"[1-9][0-9]? (km|miles)", distance), distance


def test_the_openai_batch_example(server: Server) -> None:
    done = _example("openai_batch.py", server, timeout=120)
    assert done.stdout.startswith("completed BatchRequestCounts(completed=2, failed=0, total=2)")
    assert done.stdout.count("\nq") == 2, done.stdout


def test_the_graders_example(server: Server) -> None:
    done = _example("graders.py", server, timeout=60)
    exact, holds, wrong, refused = done.stdout.splitlines()
    # ROUGE-L F of "Paris" against the 6-word explanation: 2 * (1 * 1/6) / (1 + 1/6) = 2/7
    assert exact == "'Paris': 1.029 {'exact': 1.0, 'holds': 1.0, 'close': 0.2857142857142857}"
    assert holds.startswith("'It is paris.': 0.5")
    assert wrong == "'Lyon': 0.000 {'exact': 0.0, 'holds': 0.0, 'close': 0.0}"
    assert refused == "refused: grader.calculate_output"
