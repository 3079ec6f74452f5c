"""The background writer: snapshot requests coalesce (newest wins), journal writes batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import StaticPlanner, random_dag
from vibe_planner import FileCheckpointStore, MetaPlanner, NodeContext, WorkflowPersistenceManager

pytestmark = pytest.mark.anyio


class SlowStore(FileCheckpointStore):
    """A file store whose snapshot writes and journal appends take a while (a slow disk)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.snapshots = 0
        self.appends = 0

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        time.sleep(0.03)
        self.snapshots += 1
        super().write_atomic(plan_id, name, data)

    def append(self, plan_id: str, name: str, data: bytes) -> None:
        time.sleep(0.03)
        self.appends += 1
        super().append(plan_id, name, data)


async def work(ctx: NodeContext) -> str:
    return ctx.node.id


async def test_piled_up_snapshots_coalesce_and_the_newest_state_wins(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "cp")
    planner = MetaPlanner(planner=StaticPlanner(random_dag(300, 2)), handlers={"work": work},
                          persistence_manager=WorkflowPersistenceManager(store=store),
                          checkpoint_interval=1)
    result = await planner.execute("coalesce")
    assert result.status == "completed"
    # 300 interval requests, but a slow disk gets far fewer snapshots, each of the newest state.
    assert store.snapshots == len(result.checkpoints_written) < 30
    # Journal records of concurrent completions share appends (and their fsync).
    assert store.appends < 30
    final = await planner.get_checkpoint(result.checkpoints_written[-1])
    assert final.reason == "final" and len(final.completed_nodes) == 300
    sequences = [int(cp.split("-")[1]) for cp in result.checkpoints_written]
    assert sequences == list(range(1, len(sequences) + 1))
