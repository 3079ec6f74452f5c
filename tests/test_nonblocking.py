"""The event loop never touches the disk: blockbuster raises on blocking calls made on the loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.helpers import StaticPlanner, random_dag
from vibe_planner import MetaPlanner, NodeContext, WorkflowPersistenceManager

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # blockbuster hooks the asyncio loop


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    with blockbuster_ctx() as bb:
        yield bb


async def work(ctx: NodeContext) -> str:
    return ctx.node.id


async def test_run_resume_and_manage_without_blocking_the_loop(
    tmp_path: Path, blockbuster: BlockBuster
) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "cp", keep_last=3)
    planner = MetaPlanner(planner=StaticPlanner(random_dag(200, 5)), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=5)
    first = await planner.execute("no blocking")
    again = await planner.execute_with_resume("no blocking")
    assert first.status == again.status == "completed"
    infos = await planner.list_checkpoints()
    await planner.get_checkpoint(infos[0].checkpoint_id)
    assert await manager.verify() == []
    await manager.prune(first.plan_id, keep_last=1)
    await planner.delete_checkpoint(infos[0].checkpoint_id)


def test_blockbuster_would_catch_a_blocking_write(tmp_path: Path) -> None:
    # Guard against the fixture silently not working: a plain file write on the loop must raise.
    import asyncio

    async def blocking() -> None:
        with open(tmp_path / "x", "wb") as file:  # noqa: ASYNC230
            file.write(b"x")

    with blockbuster_ctx(), pytest.raises(Exception, match=r"[Bb]locking"):
        asyncio.run(blocking())
