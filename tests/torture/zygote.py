"""A fork server for the torture tests: imports vibe_planner once, then forks real processes.

Starting a Python process that imports vibe_planner takes over a second (mostly the `openai`
SDK), which would make a crash loop of hundreds of SIGKILLs spend its time importing. This
process imports the workers once and then, per request, forks children that run a worker's
``main()`` as if started from the command line. The children are ordinary processes: they are
killed with SIGKILL and the kernel drops their locks and file descriptors as for any other.

Protocol (one JSON object per line on stdin, one answer per line on stdout)::

    {"jobs": [{"module": "tests.crash_worker", "argv": [...], "out": "/path/out.txt"}, ...],
     "kill_after": 0.25 | null, "timeout": 60}
    -> {"results": [{"pid": 123, "returncode": -9, "killed": true}, ...], "elapsed": 0.25}

Every job of a request is forked at once. After ``kill_after`` seconds (if not null) the
children still running get SIGKILL; after ``timeout`` seconds every child does and its result
says ``"timed_out": true``. Children are killed before they are reaped, so a pid is never
signalled after it could have been reused.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

PRELOADED = ["tests.crash_worker", "tests.torture.keep_worker", "tests.torture.race_worker",
             "tests.hitl_worker"]
for _name in PRELOADED:
    importlib.import_module(_name)


def child(job: dict[str, Any]) -> None:
    """Run a worker's ``main()`` in a forked child; never returns."""
    code = 1
    try:
        fd = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.argv = [job["module"], *job["argv"]]
        importlib.import_module(job["module"]).main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(request: dict[str, Any]) -> dict[str, Any]:
    # Forking a process with threads could copy a held lock; the server never starts any.
    assert threading.active_count() == 1, "the fork server must stay single-threaded"
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    children: dict[int, int] = {}  # pidfd -> pid
    for job in request["jobs"]:
        pid = os.fork()
        if pid == 0:
            child(job)
        children[os.pidfd_open(pid)] = pid
    kill_at = None if request.get("kill_after") is None else started + request["kill_after"]
    give_up: float | None = started + request.get("timeout", 120)
    running = set(children)
    timed_out: set[int] = set()
    while running:
        now = time.monotonic()
        if give_up is not None and now >= give_up:
            timed_out |= running
            kill_at, give_up = now, None
        if kill_at is not None and now >= kill_at:
            for pidfd in running:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            kill_at = None
        deadlines = [t for t in (kill_at, give_up) if t is not None]
        wait = max(0.0, min(deadlines) - now) if deadlines else None
        ready, _, _ = select.select(list(running), [], [], wait)
        running.difference_update(ready)
    results: dict[int, dict[str, Any]] = {}
    for pidfd, pid in children.items():
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        code = os.waitstatus_to_exitcode(status)
        results[pid] = {
            "pid": pid,
            "returncode": code,
            "killed": code == -signal.SIGKILL,
            "timed_out": pidfd in timed_out,
        }
    return {
        "results": [results[pid] for pid in children.values()],
        "elapsed": time.monotonic() - started,
    }


def main() -> None:
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
