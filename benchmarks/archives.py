"""Checkpoint archives: memory and time of packing and unpacking a big checkpoint, ours (streamed:
`llama_post.archives.packed`, then a spooled file and `archives.unpack`, as `POST /v1/models`
does) against the plain way (tarfile into a BytesIO, then extracting from the bytes in memory).

Each side runs in its own process, so its peak RSS (`ru_maxrss`) is its own.

    .venv/bin/python benchmarks/archives.py --mb 2048 --dir /tmp/archive-bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def make_checkpoint(folder: Path, mb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with (folder / "model.safetensors").open("wb") as f:
        block = os.urandom(1 << 20)  # weights hardly compress: random bytes are honest
        for _ in range(mb):
            f.write(block)


def ours(folder: Path, work: Path) -> dict[str, float]:
    from llama_post import archives

    start = time.perf_counter()
    path, _, size = archives.packed(folder, "ckpt")
    packed = time.perf_counter()
    with tempfile.SpooledTemporaryFile(16 << 20, dir=work) as spool:
        with path.open("rb") as f:
            shutil.copyfileobj(f, spool, 1 << 20)  # what the download does, chunk by chunk
        spool.seek(0)
        archives.unpack(spool, work / "unpacked")
    return {"size": size, "pack_s": packed - start, "unpack_s": time.perf_counter() - packed}


def plain(folder: Path, work: Path) -> dict[str, float]:
    start = time.perf_counter()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="ckpt")
    data = buffer.getvalue()
    packed = time.perf_counter()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(work / "unpacked", filter="data")
    return {"size": len(data), "pack_s": packed - start, "unpack_s": time.perf_counter() - packed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "archive-bench")
    parser.add_argument("--side", choices=["ours", "plain"])
    args = parser.parse_args()
    folder = args.dir / "step-000001"
    if args.side is not None:  # one side, in this process
        work = args.dir / f"work-{args.side}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result = (ours if args.side == "ours" else plain)(folder, work)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        shutil.rmtree(work)
        print(json.dumps(result))
        return
    shutil.rmtree(args.dir, ignore_errors=True)
    make_checkpoint(folder, args.mb)
    results = {}
    for side in ("ours", "plain"):
        run = [sys.executable, __file__, "--mb", str(args.mb), "--dir", str(args.dir)]
        out = subprocess.run([*run, "--side", side], capture_output=True, text=True, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(args.dir)
    print(f"checkpoint: {args.mb} MiB of weights")
    for key in ("peak_rss_mb", "pack_s", "unpack_s"):
        a, b = results["ours"][key], results["plain"][key]
        print(f"{key:12} ours {a:10.1f}  plain {b:10.1f}  ours/plain {a / b:.2f}")


if __name__ == "__main__":
    main()
