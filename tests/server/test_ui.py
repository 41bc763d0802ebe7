"""The web page (`/ui`) on a real server with API keys: pages rendered as their owner sees them,
friendly 404 pages, the login cookie, and a real headless Chromium (Debian's `chromium`, driven
by Playwright) that logs in, watches a job's loss curve fill in from its event stream, and chats
with the fine-tuned model. Screenshots go to `test-artifacts/ui/` (or `$LLAMA_POST_ARTIFACTS`)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.test_auth import _key
from tests.support import TINY, Server, distribution, wait_for_job

ROWS = [
    {"prompt": f"What colour is blorp {i}?", "completion": f"Blorp {i} is blue."} for i in range(8)
]
STEPS = 8  # 8 rows at batch size 2, 2 epochs
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("LLAMA_POST_ARTIFACTS", "test-artifacts")) / "ui"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("ui")
    config = distribution(home, tiny_model) | {"auth": {"enabled": True}}
    server = Server(config, home)
    keys = {"alice": _key(server.config, "alice"), "bob": _key(server.config, "bob")}
    server.start(timeout=60)
    alice = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60
    )
    made = alice.post(
        "/v1/datasets",
        json={
            "dataset_id": "blorps",
            "purpose": "instruct",
            "source": {"type": "rows", "rows": ROWS},
        },
    )
    assert made.status_code == 200, made.text
    # a benchmark the job runs on each checkpoint: its means are charted beside the loss
    questions = [{"input_query": f"What colour is blorp {i}?", "answer": "blue"} for i in range(2)]
    source = {"type": "rows", "rows": questions}
    made = alice.post(
        "/v1/datasets",
        json={"dataset_id": "blorp-qa", "purpose": "eval/question-answer", "source": source},
    )
    assert made.status_code == 200, made.text
    says = {
        "type": "string_check",
        "name": "says",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "ilike",
    }
    bench = {"benchmark_id": "blorp-bench", "dataset_id": "blorp-qa", "graders": [says]}
    made = alice.post("/v1/evaluation/benchmarks", json=bench)
    assert made.status_code == 200, made.text
    started = alice.post(
        "/v1/post-training/supervised-fine-tune",
        json={
            "job_uuid": "ui-job",
            "model": TINY,
            "training_config": {
                "n_epochs": 2,
                "data_config": {"dataset_id": "blorps", "batch_size": 2},
                "optimizer_config": {"lr": 3e-3, "num_warmup_steps": 1},
                "save_every": 4,
            },
            "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
            "evaluations": {"benchmarks": ["blorp-bench"], "max_tokens": 4},
        },
    )
    assert started.status_code == 200, started.text
    try:
        yield {"server": server, "keys": keys, "alice": alice}
    finally:
        alice.close()
        server.stop()


@contextmanager
def _logged_in(server: Server, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post("/ui/login?next=/ui", data={"key": key})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui"
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
        yield client


def test_pages_need_a_key_and_the_login_keeps_it_in_a_cookie(served: dict[str, Any]) -> None:
    server = served["server"]
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        _login_needed(server, served["keys"]["alice"], anonymous)


def _login_needed(server: Server, key: str, anonymous: httpx.Client) -> None:
    page = anonymous.get("/ui/jobs/ui-job?x=1")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=/ui/jobs/ui-job%3Fx%3D1"
    assert anonymous.get("/ui/login").status_code == 200
    assert anonymous.get("/ui/static/app.js").status_code == 200  # assets need no key
    refused = anonymous.post("/ui/login", data={"key": "tml-" + "0" * 60})
    assert refused.status_code == 401
    assert "not valid" in refused.text
    assert "set-cookie" not in refused.headers
    # a login cookie sent by anything but the page's scripts is no key for the API
    with _logged_in(server, key) as alice:
        assert alice.get("/ui").status_code == 200
        assert alice.get("/v1/post-training/jobs").status_code == 401
        ui = {"x-llama-post-ui": "1"}
        assert alice.get("/v1/post-training/jobs", headers=ui).status_code == 200
        # after a logout the pages ask for the key again
        out = alice.post("/ui/logout")
        assert out.status_code == 303
        assert 'llama_post_key=""' in out.headers["set-cookie"]
        alice.cookies.clear()
        assert alice.get("/ui").status_code == 303
    # a redirect after the login goes to a page of this UI, never another site
    elsewhere = anonymous.post("/ui/login?next=//evil.example/ui", data={"key": key})
    assert elsewhere.headers["location"] == "/ui"


def test_pages_show_what_their_owner_sees(served: dict[str, Any]) -> None:
    server, keys = served["server"], served["keys"]
    wait_for_job(served["alice"], "ui-job")
    means = _evaluated(served["alice"], "ui-job", 2)  # at steps 4 and 8 (the fine-tuned model's)
    with _logged_in(server, keys["alice"]) as alice, _logged_in(server, keys["bob"]) as bob:
        _owner_sees(alice, bob, means)


def _evaluated(http: httpx.Client, job_uuid: str, count: int) -> dict[int, float]:
    """The job's evaluations once `count` have completed: each one's mean by checkpoint step."""
    deadline = time.monotonic() + 120
    while True:
        made = http.get("/v1/evaluation/jobs", params={"job_uuid": job_uuid}).json()["data"]
        if len(made) == count and all(e["status"] == "completed" for e in made):
            return {
                int(e["request"]["metadata"]["target"].rsplit("-", 1)[1]): e["metrics"]["says"][
                    "mean"
                ]
                for e in made
            }
        assert time.monotonic() < deadline, made
        time.sleep(0.2)


def _owner_sees(alice: httpx.Client, bob: httpx.Client, means: dict[int, float]) -> None:
    jobs = alice.get("/ui")
    assert jobs.status_code == 200
    assert "default-src 'self'; script-src 'self'" in jobs.headers["content-security-policy"]
    assert 'href="/ui/jobs/ui-job"' in jobs.text
    assert re.search(r"SFT · LoRA", jobs.text)
    job = alice.get("/ui/jobs/ui-job")
    assert job.status_code == 200
    assert "ft/ui-job" in job.text and "step-000008" in job.text
    assert "computing in" in job.text  # the log's tail
    # each checkpoint's benchmark mean, a point at its step on the chart beside the loss
    chart = re.search(
        r'id="chart-evaluations" data-labels="([^"]*)"\s+data-fixed="([^"]*)"', job.text
    )
    assert chart is not None, job.text
    assert json.loads(html.unescape(chart[1])) == ["blorp-bench says"]
    assert json.loads(html.unescape(chart[2])) == {
        str(step): {"blorp-bench says": mean} for step, mean in means.items()
    }
    model = alice.get("/ui/models/ft/ui-job")
    assert model.status_code == 200 and 'data-model="ft/ui-job"' in model.text
    rows = alice.get("/ui/datasets/blorps")
    assert rows.status_code == 200
    assert all(f"Blorp {i} is blue." in rows.text for i in range(8))
    report = alice.get("/ui/datasets/blorps", params={"model": TINY})
    assert report.status_code == 200
    assert "Pre-flight report" in report.text and "[[" in report.text
    assert "<dd>8 (0 held out)</dd>" in report.text
    assert "<dd>8 an epoch at batch size 1</dd>" in report.text
    # bob's key sees none of it: the pages are 404s, as for what does not exist
    assert "ui-job" not in bob.get("/ui").text
    for path in ("/ui/jobs/ui-job", "/ui/models/ft/ui-job", "/ui/datasets/blorps"):
        hidden = bob.get(path)
        assert hidden.status_code == 404, path
        assert "Not found" in hidden.text


@pytest.mark.parametrize(
    "path",
    ["/ui/jobs/no-such-job", "/ui/models/no/such-model", "/ui/datasets/nothing", "/ui/elsewhere"],
)
def test_what_does_not_exist_is_a_friendly_404_page(served: dict[str, Any], path: str) -> None:
    with _logged_in(served["server"], served["keys"]["alice"]) as alice:
        page = alice.get(path)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in page.text
    assert "Traceback" not in page.text


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (`make test` installs it where it can: as root "
    "with apt-get)",
)
def test_a_browser_follows_a_job_and_chats_with_its_model(
    served: dict[str, Any], tiny_model: Path
) -> None:
    from playwright.sync_api import ConsoleMessage, sync_playwright

    server, alice = served["server"], served["alice"]
    started = alice.post(
        "/v1/post-training/supervised-fine-tune",
        json={
            "job_uuid": "ui-watched",
            "model": TINY,
            "training_config": {
                "n_epochs": 2,
                "data_config": {
                    "dataset_id": "blorps",
                    "batch_size": 2,
                    "validation_dataset_id": "blorps",
                },
                # a small rate, whose axis once read 0 at every tick
                "optimizer_config": {"lr": 1e-4, "num_warmup_steps": 1},
            },
            "algorithm_config": {"type": "LoRA", "rank": 4, "alpha": 8},
        },
    )
    assert started.status_code == 200, started.text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def failed(url: str, failure: str | None) -> None:
        # a download is a navigation the browser turns into a file: Chromium reports it aborted
        if not ("/checkpoint-archives/" in url and failure == "net::ERR_ABORTED"):
            problems.append(f"request failed: {url} {failure}")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda r: failed(r.url, r.failure))

            # a page asked for without the key goes to the login form, then back
            page.goto(f"{server.url}/ui/jobs/ui-watched")
            page.wait_for_url(re.compile(r"/ui/login"))
            page.fill("input[name=key]", served["keys"]["alice"])
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"/ui/jobs/ui-watched$"))

            # the loss curve fills in from the event stream, a point per step, to the end
            page.wait_for_selector(f'#chart-loss[data-points="{STEPS}"]', timeout=240_000)
            page.wait_for_selector('#job[data-status="completed"]', timeout=60_000)
            page.wait_for_selector("#chart-loss canvas")
            assert page.get_attribute("#chart-lr", "data-points") == str(STEPS)
            ticks = str(page.get_attribute("#chart-lr", "data-ticks")).split()
            assert len(set(ticks)) == len(ticks) > 2, ticks  # each tick its own label
            assert 5e-5 <= max(float(t) for t in ticks) <= 2e-4, ticks
            assert page.inner_text("#job-steps") == f"{STEPS}/{STEPS}"
            log_text = page.inner_text("#log")
            assert "computing in" in log_text
            # a library's deprecation is nothing the user can act on
            assert "Warning:" not in log_text and "deprecated" not in log_text, log_text
            assert page.locator("#checkpoints tbody tr").count() >= 1
            assert page.inner_text("#job-model") == "ft/ui-watched"
            page.screenshot(path=ARTIFACTS / "job.png", full_page=True)
            # a checkpoint downloads as the tar.gz of its folder
            with page.expect_download() as downloading:
                page.click("#checkpoints button.download")
            archive = downloading.value.path()
            with tarfile.open(archive, "r:gz") as tar:
                assert any(n.endswith("adapter_config.json") for n in tar.getnames())

            # the benchmark's mean at each checkpoint of ui-job, drawn beside its loss
            wait_for_job(alice, "ui-job")
            _evaluated(alice, "ui-job", 2)
            page.goto(f"{server.url}/ui/jobs/ui-job")
            page.wait_for_selector('#chart-evaluations[data-points="2"] canvas', timeout=60_000)
            page.wait_for_selector(f'#chart-loss[data-points="{STEPS}"]', timeout=60_000)

            page.goto(f"{server.url}/ui")
            page.wait_for_selector('tr[data-job="ui-watched"]')
            page.screenshot(path=ARTIFACTS / "jobs.png", full_page=True)

            # the chat box streams an answer from the fine-tuned adapter
            page.goto(f"{server.url}/ui/models/ft/ui-watched")
            page.fill("#chat-input", "What colour is blorp 3?")
            page.fill("#chat-max-tokens", "12")
            page.click("#chat-send")
            page.wait_for_selector('#chat[data-state="done"]', timeout=120_000)
            answer = page.inner_text(".message.assistant")
            assert answer.strip(), "the chat box got no answer"
            page.screenshot(path=ARTIFACTS / "chat.png", full_page=True)

            page.goto(f"{server.url}/ui/datasets/blorps?model={TINY}")
            page.wait_for_selector("#preflight")
            page.screenshot(path=ARTIFACTS / "dataset.png", full_page=True)

            assert problems == [], problems

            page.goto(f"{server.url}/ui/jobs/not-a-job")
            assert page.inner_text("h1") == "Not found"
        finally:
            browser.close()
