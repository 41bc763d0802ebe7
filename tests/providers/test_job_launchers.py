"""The launcher setting and what the job machinery reads from a launcher: the config's closed
choices, torchrun's command and its report of the rank that failed, Ray's states as exit codes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pydantic import ValidationError

from providers.jobs.config import LocalJobsConfig
from providers.jobs.folder import EXIT_CANCELLED, EXIT_LOST
from providers.jobs.launch import root_cause, torchrun_command
from providers.jobs.launchers import RayLauncher, TorchrunLauncher
from providers.jobs.ray import exit_code, submission_id


def _config(launcher: object) -> LocalJobsConfig:
    return LocalJobsConfig.model_validate(
        {"storage_dir": "/tmp/s", "checkpoint_root": "/tmp/c", "launcher": launcher}
    )


def test_the_launcher_is_a_closed_choice_with_strict_fields() -> None:
    assert _config({"type": "local"}).launcher.type == "local"
    ray = _config({"type": "ray", "torchrun": {"nproc_per_node": 4, "sharding": "fsdp"}}).launcher
    assert isinstance(ray, RayLauncher) and ray.torchrun is not None
    with pytest.raises(ValidationError, match="launcher"):
        _config({"type": "slurm"})
    with pytest.raises(ValidationError, match="nprocs"):
        _config({"type": "torchrun", "nprocs": 2})  # a typo is an error, not a default
    with pytest.raises(ValidationError, match="sharding"):
        _config({"type": "torchrun", "sharding": "zero3"})
    with pytest.raises(ValidationError, match="address"):
        _config({"type": "ray", "address": "ray-head:8265"})  # the dashboard's URL


def test_torchrun_runs_the_same_recipe_as_ranks() -> None:
    worker = ["/py", "-m", "providers.inline.post_training.peft.recipe_sft", "/jobs/a"]
    one_node = torchrun_command(TorchrunLauncher(nproc_per_node=2), worker, "a")
    assert one_node[:4] == ["/py", "-m", "torch.distributed.run", "--standalone"]
    assert one_node[-3:] == worker[1:] and "--max-restarts" in one_node
    nodes = TorchrunLauncher(nproc_per_node=8, nnodes=2, rdzv_endpoint="head:29400")
    several = torchrun_command(nodes, worker, "a")
    assert "--standalone" not in several
    assert several[several.index("--rdzv-endpoint") + 1] == "head:29400"
    assert several[several.index("--rdzv-id") + 1] == "a"


def test_the_failed_rank_s_own_exit_code_is_read_from_torchrun_s_report(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(
        "step 3 epoch 0 loss 1.0\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
        "Failures:\n  <NO_OTHER_FAILURES>\n"
        "Root Cause (first observed failure):\n[0]:\n"
        "  rank      : 1 (local_rank: 1)\n"
        "  exitcode  : -9 (pid: 1234)\n"
        "  traceback : Signal 9 (SIGKILL) received by PID 1234\n"
    )
    assert root_cause(log, 1) == -signal.SIGKILL
    log.write_text("Traceback: no report\n")
    assert root_cause(log, 1) == 1


def test_ray_states_map_to_exit_codes() -> None:
    assert exit_code({"status": "SUCCEEDED"}) == 0
    assert exit_code({"status": "STOPPED"}) == EXIT_CANCELLED
    assert exit_code({"status": "FAILED", "driver_exit_code": 5}) == 5
    assert exit_code({"status": "FAILED", "driver_exit_code": None}) == EXIT_LOST
    assert submission_id("sft-1", 2) == "sft-1-attempt-2"
