"""Local state: SQLite files that several processes open at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from llama_post.storage import Database

SCHEMA = "CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY, value TEXT);"


def _open_and_write(path: str, barrier: object, n: int) -> str | None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        db = Database(Path(path), SCHEMA)
        db.execute("INSERT INTO things (id, value) VALUES (?, ?)", (f"t{n}", "x"))
        db.close()
        return None
    except Exception as exc:  # returned, so the parent sees every process's failure
        return repr(exc)


def test_processes_opening_one_new_file_together_all_succeed(tmp_path: Path) -> None:
    """Two servers started on a new home open the same new SQLite files at the same moment:
    switching a new file to WAL does not wait on SQLite's busy handler, so Database retries."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        for round in range(6):
            path = tmp_path / f"round{round}" / "state.db"
            barrier = manager.Barrier(3)
            with context.Pool(3) as pool:
                results = pool.starmap(_open_and_write, [(str(path), barrier, n) for n in range(3)])
            assert results == [None, None, None]
            db = Database(path, SCHEMA)
            assert [r["id"] for r in db.all("SELECT id FROM things ORDER BY id")] == [
                "t0",
                "t1",
                "t2",
            ]
            db.close()
