"""A worker for tests/providers/test_forks.py: reports how it was run, then exits with argv[1]
(or sleeps, with "sleep")."""

import json
import os
import sys
import time
from pathlib import Path

print(
    json.dumps(
        {
            "argv": sys.argv,
            "probe": os.environ.get("FORK_PROBE"),
            "cwd": str(Path.cwd()),
            "main": __name__,
            "pid": os.getpid(),
            "session": os.getsid(0) == os.getpid(),
        }
    )
)
sys.stdout.flush()
if sys.argv[1] == "sleep":
    time.sleep(600)
if sys.argv[1] == "raise":
    raise ValueError("the worker failed")
sys.exit(int(sys.argv[1]))
