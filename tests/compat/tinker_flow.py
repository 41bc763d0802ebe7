"""The tinker SDK's RestClient, unchanged, against llama-post: run in the pinned SDK's own
environment (`pins/tinker-0.38.txt`). Arguments: the server's URL, the owner's key, another
owner's key, the job (training run) to look at. Its last line is a JSON report."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import tinker


def rest_client(url: str, key: str) -> Any:
    service = tinker.ServiceClient(base_url=url, api_key=key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # create_rest_client is deprecated
        return service.create_rest_client()


def main(url: str, key: str, other_key: str, run_id: str) -> dict[str, Any]:
    rest = rest_client(url, key)
    runs = rest.list_training_runs(limit=50).result()
    assert run_id in [r.training_run_id for r in runs.training_runs]
    assert runs.cursor.total_count >= 1
    run = rest.get_training_run(run_id).result()
    assert run.is_lora and run.lora_rank == 2 and run.model_owner == "alice", run
    assert run.user_metadata == {"team": "fish"}

    listed = rest.list_checkpoints(run_id).result().checkpoints
    paths = [c.tinker_path for c in listed]
    assert paths == [
        f"tinker://{run_id}/weights/step-000001",
        f"tinker://{run_id}/weights/step-000002",
    ]
    assert all(c.checkpoint_type == "training" and c.size_bytes for c in listed)
    mine = rest.list_user_checkpoints().result()
    assert set(paths) <= {c.tinker_path for c in mine.checkpoints}
    assert mine.cursor is not None and mine.cursor.total_count >= 2

    final = paths[-1]
    info = rest.get_weights_info_by_tinker_path(final).result()
    assert info.is_lora and info.lora_rank == 2 and info.base_model == "tiny/llama", info
    assert rest.get_training_run_by_tinker_path(final).result().training_run_id == run_id

    rest.publish_checkpoint_from_tinker_path(final).result()
    assert rest.list_checkpoints(run_id).result().checkpoints[-1].public
    rest.unpublish_checkpoint_from_tinker_path(final).result()
    assert not rest.list_checkpoints(run_id).result().checkpoints[-1].public
    rest.set_checkpoint_ttl_from_tinker_path(final, 3600).result()
    assert rest.list_checkpoints(run_id).result().checkpoints[-1].expires_at is not None
    rest.set_checkpoint_ttl_from_tinker_path(final, None).result()
    assert rest.list_checkpoints(run_id).result().checkpoints[-1].expires_at is None

    # the CLI downloads each file from a URL that carries its own token (no key sent)
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "TINKER_API_KEY": key, "TINKER_BASE_URL": url}
        exported = final.replace("/weights/", "/external_weights/")
        cli = Path(sys.executable).with_name("tinker")
        done = subprocess.run(
            [str(cli), "checkpoint", "download", exported, "--output", out],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        (folder,) = Path(out).iterdir()
        downloaded = {
            p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*")
            if p.is_file()
        }

    rest.delete_checkpoint_from_tinker_path(paths[0]).result()
    left = [c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints]
    assert left == [final], left

    other = rest_client(url, other_key)
    assert run_id not in [
        r.training_run_id for r in other.list_training_runs().result().training_runs
    ]
    try:
        other.get_training_run(run_id).result()
    except tinker.NotFoundError:
        pass
    else:
        raise AssertionError("another owner read the run")
    return {"tinker": tinker.__version__, "downloaded": downloaded}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
