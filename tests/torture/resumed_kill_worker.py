"""Worker of `test_torture_cancel.py`: a run that SIGKILLs itself at a chosen point.

Usage: python -m tests.torture.resumed_kill_worker CHECKPOINT_DIR LOG SIZE SEED INTERVAL KILL NOTE

Runs the seeded random DAG of SIZE nodes (``tests.helpers.random_dag``) with instant handlers
that append their node id to LOG before they return (the side effect the test counts). KILL:

- ``none``: run to the end; print the status and a digest of every node's output;
- ``node:K``: SIGKILL inside the handler of the K-th node to start (before it logs);
- ``resumed-before`` / ``resumed-after``: SIGKILL when the store is asked to write the run's
  ``resumed`` snapshot, before the file is written or right after (before the journal is
  compacted). Before dying it writes NOTE: how many result records the run's journal held.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.helpers import StaticPlanner, random_dag
from tests.torture.cancel_worker import pure_output
from vibe_planner import FileCheckpointStore, MetaPlanner, NodeContext, WorkflowPersistenceManager


def vibe(size: int, seed: int) -> str:
    return f"resumed kill {size} {seed}"


class KillingStore(FileCheckpointStore):
    """A file store that SIGKILLs its process in the write of the ``resumed`` snapshot."""

    def __init__(self, root: Path, after: bool, note: Path) -> None:
        super().__init__(root)
        self.after = after
        self.note = note

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        resumed = name.startswith("cp-") and b'"reason":"resumed"' in data
        if resumed and not self.after:
            self.die(plan_id, data)
        super().write_atomic(plan_id, name, data)
        if resumed:
            self.die(plan_id, data)

    def die(self, plan_id: str, data: bytes) -> None:
        run_id = orjson.loads(data)["run_id"]
        journal = self.location(plan_id, f"journal-{run_id}.jsonl")
        lines = journal.read_bytes().splitlines() if journal.exists() else []
        note = {"run_id": run_id, "journal_results": sum(b'"result":' in line for line in lines)}
        self.note.write_bytes(orjson.dumps(note))
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    checkpoint_dir, log_path, size, seed, interval, kill, note = sys.argv[1:8]
    nodes = random_dag(int(size), int(seed), max_deps=2)
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    kill_at = int(kill.removeprefix("node:")) if kill.startswith("node:") else None
    started = 0

    async def work(ctx: NodeContext) -> Any:
        nonlocal started
        started += 1
        if started == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        log.write(f"{ctx.node.id}\n".encode())
        return pure_output(ctx.node.id, ctx.inputs)

    store: FileCheckpointStore = FileCheckpointStore(Path(checkpoint_dir))
    if kill.startswith("resumed-"):
        store = KillingStore(Path(checkpoint_dir), kill == "resumed-after", Path(note))
    planner = MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": work},
                          persistence_manager=WorkflowPersistenceManager(store=store),
                          checkpoint_interval=int(interval), max_concurrency=4, node_timeout=None)
    result = anyio.run(planner.execute_with_resume, vibe(int(size), int(seed)))
    outputs = {node_id: r.output for node_id, r in result.node_results.items()}
    digest = hashlib.sha256(orjson.dumps(outputs, option=orjson.OPT_SORT_KEYS)).hexdigest()
    print(f"{result.status} {result.nodes_run} {result.nodes_restored}")
    print(digest)


if __name__ == "__main__":
    main()
