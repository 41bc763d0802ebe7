"""Llama Stack's own integration tests for datasets, files and post-training, run against
llama-post in the pinned client environments (llama-stack-client and llama-stack at the same
release), unchanged but for offline data and the bundled model: `llama_stack/README.md` says
what was changed, and `llama_stack/upstream/` holds the files."""

from __future__ import annotations

import hashlib
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.envs import cache_root, client_python, python312
from tests.support import Server

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = Path(__file__).parent / "llama_stack" / "upstream"
# Marked `xfail` by the tests themselves: they may pass or fail
UPSTREAM_XFAIL = {
    "test_expires_after",
    "test_expires_after_requests",
    "test_files_authentication_isolation",
}
DATASETS_AND_FILES = [
    *(
        f"test_datasets.py::test_register_and_iterrows[eval/messages-answer-{source}]"
        for source in ("source0-localfs-10", "source1-localfs-2", "source2-localfs-5")
    ),
    "test_files.py::test_openai_client_basic_operations",
    "test_files.py::test_expires_after",
    "test_files.py::test_expires_after_requests",
    "test_files.py::test_files_authentication_isolation",
    "test_files.py::test_files_authentication_shared_attributes",
    "test_files.py::test_files_authentication_anonymous_access",
]


def converted_models() -> Path:
    """A folder for run.yaml's converted models, named after what decides its content."""
    digest = hashlib.sha256()
    for part in ("requirements/nodeps.txt", "providers/utils/gguf.py", "run.yaml"):
        digest.update((ROOT / part).read_bytes())
    folder = cache_root().parent / "models" / f"run-yaml-{digest.hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_upstream(release: str, url: str, report: Path, *paths: str, timeout: float) -> list[str]:
    """Run upstream's test files in the client environment of `release`; each test's id
    (`file::name[params]`) and outcome, as `id outcome`."""
    python = client_python(f"llama-stack-client-{release}", python312())
    tag = UPSTREAM / f"v{release}" / "tests" / "integration"
    done = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-c",
            UPSTREAM / "pytest.ini",
            "--rootdir",
            UPSTREAM,
            f"--stack-config={url}",
            f"--junitxml={report}",
            "-o",
            "junit_family=xunit1",
            *(tag / p for p in paths),
        ],
        cwd=UPSTREAM,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert report.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    outcomes = [_outcome(case) for case in ET.parse(report).iter("testcase")]
    assert done.returncode == 0, "\n".join(outcomes) + "\n" + done.stdout[-6000:]
    print(done.stdout[-1500:])  # upstream's summary, shown with -rP
    return outcomes


def _outcome(case: ET.Element) -> str:
    skipped = case.find("skipped")
    if case.find("failure") is not None or case.find("error") is not None:
        outcome = "failed"
    elif skipped is not None:
        outcome = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
    else:
        outcome = "passed"
    return f"{Path(case.get('file', '')).name}::{case.get('name')} {outcome}"


def expected(tests: list[str]) -> set[str]:
    """Every test passes, except those upstream marks xfail, which may fail."""
    allowed = set()
    for test in tests:
        allowed.add(f"{test} passed")
        if test.split("::")[1] in UPSTREAM_XFAIL:
            allowed.add(f"{test} xfailed")
    return allowed


@pytest.mark.parametrize("release", ["0.2.23", "0.7.0"])
def test_llama_stacks_datasets_and_files_tests_pass(
    server: Server, release: str, tmp_path: Path
) -> None:
    outcomes = run_upstream(
        release,
        server.url,
        tmp_path / "report.xml",
        "datasets/test_datasets.py",
        "files/test_files.py",
        timeout=240,
    )
    assert len(outcomes) == len(DATASETS_AND_FILES), outcomes
    assert set(outcomes) <= expected(DATASETS_AND_FILES), outcomes


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`llama-post run run.yaml` on a home of its own: the bundled SmolLM2-135M-Instruct. Its
    conversion from GGUF (a minute) is kept outside the clone for the next run, as a user's home
    keeps it for the next start, per bundled package and converter (tests/slow/test_smollm2.py
    converts it anew)."""
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(converted_models())
    server = Server(ROOT / "run.yaml", home, env={"LLAMA_POST_HOME": str(home)})
    server.start(timeout=240)
    yield server
    assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(540)  # two jobs polled every 10 s, as upstream's tests poll (100 s here)
def test_llama_stacks_post_training_tests_pass(bundled: Server, tmp_path: Path) -> None:
    """SFT (LoRA on torchtune's module names, `instruct` rows of simpleqa's shape) and DPO
    (TRL-style pairs on a `post-training/messages` dataset), one step each on SmolLM2."""
    tests = [
        "test_post_training.py::test_supervised_fine_tune[post-training/messages-source0]",
        "test_post_training.py::test_preference_optimize[post-training/messages-source0]",
    ]
    outcomes = run_upstream(
        "0.2.23",
        bundled.url,
        tmp_path / "report.xml",
        "post_training/test_post_training.py",
        timeout=420,
    )
    assert sorted(outcomes) == sorted(f"{t} passed" for t in tests), outcomes
