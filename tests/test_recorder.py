"""The background writer: snapshot requests coalesce (newest wins), journal writes batch."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from tests.helpers import StaticPlanner, random_dag
from vibe_planner import FileCheckpointStore, MetaPlanner, NodeContext, WorkflowPersistenceManager

pytestmark = pytest.mark.anyio

NODES = 300
CONCURRENCY = 4


class StuckStore(FileCheckpointStore):
    """A file store whose second snapshot write is stuck until `unstick` is set (a disk that
    stalls while the run goes on): whatever piles up meanwhile does so by construction, not
    because the disk happened to be slower than the nodes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.snapshots = 0
        self.appends = 0
        self.unstick = threading.Event()

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        self.snapshots += 1
        if self.snapshots == 2:  # the first one, "planned", is awaited before any node runs
            assert self.unstick.wait(timeout=30), "the last node never ran"
        super().write_atomic(plan_id, name, data)

    def append(self, plan_id: str, name: str, data: bytes) -> None:
        self.appends += 1
        super().append(plan_id, name, data)


async def test_piled_up_snapshots_coalesce_and_the_newest_state_wins(tmp_path: Path) -> None:
    store = StuckStore(tmp_path / "cp")
    calls = 0

    async def work(ctx: NodeContext) -> str:
        nonlocal calls
        calls += 1
        if calls == NODES:  # every other node ran: all their requests piled up behind the disk
            store.unstick.set()
        return ctx.node.id

    planner = MetaPlanner(planner=StaticPlanner(random_dag(NODES, 2)), handlers={"work": work},
                          persistence_manager=WorkflowPersistenceManager(store=store),
                          checkpoint_interval=1, max_concurrency=CONCURRENCY)
    with anyio.fail_after(60):
        result = await planner.execute("coalesce")
    assert result.status == "completed"
    # 300 interval requests, 299 or so of them made while the disk was stuck: they coalesce
    # into a handful of snapshots (planned, the stuck one, then at most an interval snapshot
    # or two and the final one), each of the newest state.
    assert store.snapshots == len(result.checkpoints_written) <= 5
    after_stuck = await planner.get_checkpoint(result.checkpoints_written[2])
    # When the disk came back, at most the other nodes in flight had not finished yet.
    assert len(after_stuck.completed_nodes) >= NODES - CONCURRENCY
    # Journal records of the completions made meanwhile share appends (and their fsync): the
    # one before the stuck snapshot, then at most two.
    assert store.appends <= 3
    final = await planner.get_checkpoint(result.checkpoints_written[-1])
    assert final.reason == "final" and len(final.completed_nodes) == NODES
    sequences = [int(cp.split("-")[1]) for cp in result.checkpoints_written]
    assert sequences == list(range(1, len(sequences) + 1))
