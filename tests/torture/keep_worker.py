"""`tests/crash_worker.py` with automatic pruning, for crash loops that delete files as they go.

Usage: python -m tests.torture.keep_worker <crash_worker arguments...> KEEP_LAST

Runs `tests/crash_worker.py`'s ``main()`` with ``WorkflowPersistenceManager(keep_last=KEEP_LAST)``,
so that every snapshot write also deletes older snapshots and the journals no kept snapshot
refers to: the crash loop then also kills processes in the middle of pruning.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests import crash_worker
from vibe_planner import WorkflowPersistenceManager


def main() -> None:
    keep_last = int(sys.argv.pop())
    crash_worker.WorkflowPersistenceManager = functools.partial(  # type: ignore[misc]
        WorkflowPersistenceManager, keep_last=keep_last
    )
    crash_worker.main()


if __name__ == "__main__":
    main()
