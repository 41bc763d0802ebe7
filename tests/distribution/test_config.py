from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from llama_post.apis import Api
from llama_post.distribution.config import load_run_config
from llama_post.distribution.stack import Stack
from llama_post.errors import ConfigError
from llama_post.graders import GraderSettings
from tests.support import distribution

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = sorted([ROOT / "run.yaml", *(ROOT / "distributions").glob("**/*.yaml")])


@pytest.mark.parametrize("path", DISTRIBUTIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_distribution_loads_and_starts(path: Path, tmp_path: Path) -> None:
    """Every provider starts; loading the models (slow) is left to the slow lane."""
    env = {
        "LLAMA_POST_HOME": str(tmp_path),
        "LLAMA_POST_IMPORT_DIR": str(tmp_path / "import"),
        "VLLM_URL": "http://127.0.0.1:9",  # nothing listens: remote::vllm starts degraded
        "VLLM_OPTIONAL": "true",
    }
    _, providers = load_run_config(path, env)
    assert providers, path
    raw = yaml.safe_load(path.read_text())
    raw["models"] = []

    async def start() -> None:
        stack = await Stack.build(raw, env)
        try:
            assert set(stack.impls) >= {p.api for p in providers}
        finally:
            await stack.shutdown()

    asyncio.run(start())


def test_env_substitution(tmp_path: Path) -> None:
    raw = distribution(tmp_path)
    raw["providers"]["files"][0]["config"] = {
        "storage_dir": "${env.HOME_DIR}/files",
        "max_upload_bytes": "${env.LIMIT:=1234}",
    }
    _, providers = load_run_config(raw, {"HOME_DIR": str(tmp_path)})
    files = next(p for p in providers if p.api == Api.files).config
    assert files.model_dump() == {"storage_dir": tmp_path / "files", "max_upload_bytes": 1234}

    _, providers = load_run_config(raw, {"HOME_DIR": str(tmp_path), "LIMIT": "99"})
    assert (
        next(p for p in providers if p.api == Api.files).config.model_dump()["max_upload_bytes"]
        == 99
    )


def test_every_problem_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    raw = distribution(tmp_path)
    raw["providers"]["files"][0]["config"]["max_upload_bytes"] = "lots"
    raw["providers"]["files"][0]["config"]["stroage_dir"] = "typo"
    raw["providers"]["datasets"].append({"provider_id": "second", "provider_type": "remote::nope"})
    raw["providers"]["datasets"][0]["config"]["allowed_dirs"] = "${env.MISSING}"
    with pytest.raises(ConfigError) as caught:
        load_run_config(raw, {})
    fields: dict[str | None, str] = {}
    for d in caught.value.details:
        fields[d.field] = fields.get(d.field, "") + d.message + "; "
    assert "MISSING is not set" in fields["providers.datasets[0].config.allowed_dirs"]
    assert "providers.files[0].config.max_upload_bytes" in fields
    assert "providers.files[0].config.stroage_dir" in fields
    assert "unknown provider type 'remote::nope'" in fields["providers.datasets[1].provider_type"]
    text = str(caught.value)
    assert "providers.files[0].config.stroage_dir" in text


def test_shape_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run_config({"distribution": "x", "providers": {"nonsense": []}, "extra": 1}, {})
    fields = {d.field for d in caught.value.details}
    assert {"providers.nonsense", "extra"} <= fields

    raw = distribution(tmp_path)
    raw["providers"]["files"].append(dict(raw["providers"]["files"][0]))
    with pytest.raises(ConfigError, match="duplicate 'localfs'"):
        load_run_config(raw, {})


def test_a_missing_dependency_is_a_startup_error(tmp_path: Path) -> None:
    raw = distribution(tmp_path)
    del raw["providers"]["files"]
    with pytest.raises(ConfigError) as caught:
        load_run_config(raw, {})
    assert "needs the files API" in str(caught.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_run_config(bad)


def test_a_provider_that_fails_to_start_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder must go")
    raw = distribution(tmp_path, files={"storage_dir": str(blocker)})
    with pytest.raises(ConfigError, match=r"provider 'localfs' \(inline::localfs\) for files"):
        asyncio.run(Stack.build(raw, {}))


def test_a_home_folder_is_expanded_even_when_it_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`~` in any configured folder, written or defaulted, is the home, never `./~`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    raw = distribution(tmp_path / "unused", tmp_path / "model")
    del raw["storage_dir"]
    raw["providers"]["files"][0]["config"]["storage_dir"] = "~/files"
    raw["providers"]["inference"][0]["config"]["model_dirs"] = ["~/models"]
    run, providers = load_run_config(raw, {})
    home = tmp_path / "home"
    assert run.storage_dir == home / ".llama-post"
    configs = {p.api: p.config for p in providers}
    assert configs[Api.files].storage_dir == home / "files"  # type: ignore[attr-defined]
    assert configs[Api.inference].model_dirs == [home / "models"]  # type: ignore[attr-defined]

    async def start() -> None:
        raw["providers"].pop("inference")
        raw["providers"].pop("post_training")
        raw.pop("models")
        stack = await Stack.build(raw, {})
        await stack.shutdown()

    asyncio.run(start())
    assert (home / ".llama-post" / "registry.db").is_file()
    assert not (tmp_path / "~").exists()


def test_the_graders_section(tmp_path: Path) -> None:
    """Python graders are off unless enabled; their limits reach the runner; a bad limit is
    reported with its path."""
    raw = distribution(tmp_path)
    run, _ = load_run_config(raw, {})
    assert run.graders.settings() == GraderSettings()
    assert not run.graders.settings().python_enabled
    python = {"enabled": True, "cpu_seconds": 2, "memory_mb": 256, "timeout_s": 3}
    run, _ = load_run_config(raw | {"graders": {"python": python}}, {})
    assert run.graders.settings() == GraderSettings(True, 2, 256, 3)
    with pytest.raises(ConfigError) as caught:
        load_run_config(raw | {"graders": {"python": {"enabled": True, "cpu_seconds": 0}}}, {})
    assert "graders.python.cpu_seconds" in str(caught.value)
