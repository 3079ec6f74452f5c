"""Scenarios of the independent attack (issue 10), each run in a process of its own.

Usage: python tests/break_worker.py SCENARIO BACKEND CHECKPOINT_DIR LOG_PATH

The scenarios that once hung forever run here, in a child process the test waits for with a
timeout, so a regression fails the test instead of hanging the suite. Each prints one JSON
object as its last line of stdout. Node bodies append their id to LOG_PATH before they report
completion (the side effect the tests count).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import StaticPlanner, node
from vibe_planner import (
    FileCheckpointStore,
    MetaPlanner,
    NodeCompleted,
    NodeContext,
    ProgressEvent,
    Vibe,
    WorkflowPersistenceManager,
)

CHAIN = [node("a"), node("b", "a"), node("c", "b")]
WIDE = [node(f"w{i:03d}") for i in range(80)] + [node("sink", *(f"w{i:03d}" for i in range(80)))]


class Boom(BaseException):
    """A BaseException that is neither Exception, KeyboardInterrupt nor SystemExit."""


class KillingStore(FileCheckpointStore):
    """A file store that SIGKILLs its own process when asked to write a snapshot of *reason*.

    Before dying it notes, in ``<root>/../kill.json``, how many result records the dying run's
    journal already held (the records a later resume must not run again).
    """

    def __init__(self, root: Path, reason: str) -> None:
        super().__init__(root)
        self.reason = reason.encode()

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        if name.startswith("cp-") and b'"reason":"' + self.reason + b'"' in data:
            run_id = orjson.loads(data)["run_id"]
            journal = self.location(plan_id, f"journal-{run_id}.jsonl")
            lines = journal.read_bytes().splitlines() if journal.exists() else []
            results = [line for line in lines if b'"result":' in line]
            note = {"run_id": run_id, "journal_results": len(results)}
            (self.root.parent / "kill.json").write_bytes(orjson.dumps(note))
            os.kill(os.getpid(), signal.SIGKILL)
        super().write_atomic(plan_id, name, data)


def main() -> None:
    scenario, backend, checkpoint_dir, log_path = sys.argv[1:5]
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    outcome = anyio.run(SCENARIOS[scenario], Path(checkpoint_dir), log, backend=backend)
    print(orjson.dumps(outcome).decode())


def logging_handler(log: Any, output: Any = None) -> Any:
    async def work(ctx: NodeContext) -> Any:
        log.write(f"{ctx.node.id}\n".encode())
        return ctx.node.id if output is None else output(ctx)

    return work


async def cancel_during_big_snapshot(checkpoint_dir: Path, log: Any) -> dict[str, Any]:
    """Break 1: the caller's scope is cancelled when the last node of a 20 MB chain completes."""
    scope = anyio.CancelScope()

    def on_event(event: ProgressEvent) -> None:
        if isinstance(event, NodeCompleted) and event.node_id == "c":
            scope.cancel()

    big = logging_handler(log, lambda ctx: "x" * 20_000_000 if ctx.node.id == "a" else ctx.node.id)
    planner = MetaPlanner(planner=StaticPlanner(CHAIN), handlers={"work": big},
                          persistence_manager=WorkflowPersistenceManager(checkpoint_dir),
                          checkpoint_interval=1, progress_callback=on_event)
    with scope:
        await planner.execute_with_resume("twenty megabytes")
    resumed = await planner.execute_with_resume("twenty megabytes")
    return {"cancelled": scope.cancelled_caught, "resumed": resumed.status,
            "tail": resumed.outputs["c"]}


async def cancel_at_start(checkpoint_dir: Path, log: Any) -> dict[str, Any]:
    """Break 1: the caller's scope is cancelled as soon as the run's first event is out."""
    scope = anyio.CancelScope()
    planner = MetaPlanner(planner=StaticPlanner(CHAIN), handlers={"work": logging_handler(log)},
                          persistence_manager=WorkflowPersistenceManager(checkpoint_dir),
                          checkpoint_interval=1, progress_callback=lambda event: scope.cancel())
    with scope:
        await planner.execute_with_resume("cancel at start")
    planner.progress_callback = None
    resumed = await planner.execute_with_resume("cancel at start")
    return {"resumed": resumed.status}


async def base_exception(checkpoint_dir: Path, log: Any) -> dict[str, Any]:
    """Break 2: a handler raises a BaseException of its own."""
    armed = True

    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "b" and armed:
            raise Boom("boom")
        log.write(f"{ctx.node.id}\n".encode())
        return ctx.node.id

    manager = WorkflowPersistenceManager(checkpoint_dir)
    planner = MetaPlanner(planner=StaticPlanner(CHAIN), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=1)
    raised = None
    try:
        await planner.execute_with_resume("base exception")
    except Boom as exc:
        raised = type(exc).__name__
    latest = await manager.latest(Vibe(description="base exception").default_plan_id())
    armed = False
    resumed = await planner.execute_with_resume("base exception")
    return {"raised": raised, "latest_reason": None if latest is None else latest.reason,
            "resumed": resumed.status, "restored": resumed.nodes_restored}


async def kill_in_interval_snapshot(checkpoint_dir: Path, log: Any) -> dict[str, Any]:
    """A run whose first interval snapshot SIGKILLs the process (its journal has records)."""
    return await run_wide(WorkflowPersistenceManager(store=KillingStore(checkpoint_dir, "interval")), log)


async def kill_in_resumed_snapshot(checkpoint_dir: Path, log: Any) -> dict[str, Any]:
    """Break 5: a resumed run dies inside its first (``resumed``) snapshot."""
    return await run_wide(WorkflowPersistenceManager(store=KillingStore(checkpoint_dir, "resumed")), log)


async def finish(checkpoint_dir: Path, log: Any) -> dict[str, Any]:
    """Resume the wide plan to the end with no kill."""
    return await run_wide(WorkflowPersistenceManager(checkpoint_dir), log)


async def run_wide(manager: WorkflowPersistenceManager, log: Any) -> dict[str, Any]:
    planner = MetaPlanner(planner=StaticPlanner(WIDE), handlers={"work": logging_handler(log)},
                          persistence_manager=manager, checkpoint_interval=20, max_concurrency=4)
    result = await planner.execute_with_resume("wide")
    return {"status": result.status, "restored": result.nodes_restored, "run": result.nodes_run}


SCENARIOS = {
    "cancel_during_big_snapshot": cancel_during_big_snapshot,
    "cancel_at_start": cancel_at_start,
    "base_exception": base_exception,
    "kill_in_interval_snapshot": kill_in_interval_snapshot,
    "kill_in_resumed_snapshot": kill_in_resumed_snapshot,
    "finish": finish,
}

if __name__ == "__main__":
    main()
