"""Progress events: callback and subscription, never stalling or breaking the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import StaticPlanner, node
from vibe_planner import (
    CheckpointWritten,
    MetaPlanner,
    NodeCompleted,
    NodeContext,
    NodeError,
    NodeFailed,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    PlanCreated,
    ProgressEvent,
    RetryPolicy,
    RunFinished,
    WorkflowPersistenceManager,
)

pytestmark = pytest.mark.anyio

NODES = [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c")]


async def ok(ctx: NodeContext) -> str:
    return ctx.node.id


def make(tmp_path: Path, nodes: list[Any] = NODES, work: Any = ok, **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": work},
                       persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                       retry=RetryPolicy(max_attempts=2, initial_delay=0.001), **kwargs)


async def test_callback_sees_the_whole_run_in_order(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    result = await make(tmp_path, progress_callback=events.append).execute("events")
    assert isinstance(events[0], PlanCreated) and events[0].total == 4
    assert isinstance(events[-1], RunFinished) and events[-1].status == "completed"
    assert events[-1].completed == 4
    started = [e.node_id for e in events if isinstance(e, NodeStarted)]
    completed = [e.node_id for e in events if isinstance(e, NodeCompleted)]
    assert sorted(started) == sorted(completed) == ["a", "b", "c", "d"]
    assert started[0] == "a" and completed[-1] == "d"
    # Counts include the event's own node: the fourth completion says 4/4.
    assert [e.completed for e in events if isinstance(e, NodeCompleted)] == [1, 2, 3, 4]
    written = [e.checkpoint_id for e in events if isinstance(e, CheckpointWritten)]
    assert written == result.checkpoints_written
    counts = [e.completed for e in events]
    assert counts == sorted(counts)
    elapsed = [e.elapsed for e in events]
    assert elapsed == sorted(elapsed)


async def test_failure_retry_and_skip_events(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "b":
            raise NodeError("b broke") if ctx.attempt == 2 else ConnectionError("blip")
        return ctx.node.id

    events: list[ProgressEvent] = []
    result = await make(tmp_path, work=work, progress_callback=events.append).execute("fail")
    assert result.status == "failed"
    retry = [e for e in events if isinstance(e, NodeRetrying)]
    assert [(e.node_id, e.attempt, e.error) for e in retry] == [("b", 1, "blip")]
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert [(e.node_id, e.error, e.failed) for e in failed] == [("b", "b broke", 1)]
    skipped = [e for e in events if isinstance(e, NodeSkipped)]
    assert [(e.node_id, e.because_of) for e in skipped] == [("d", "b")]
    assert isinstance(events[-1], RunFinished) and events[-1].status == "failed"


async def test_a_stuck_async_callback_does_not_stall_the_run(tmp_path: Path) -> None:
    never = anyio.Event()
    calls = 0

    async def stuck(event: ProgressEvent) -> None:
        nonlocal calls
        calls += 1
        await never.wait()

    with anyio.fail_after(10):
        result = await make(tmp_path, progress_callback=stuck).execute("stuck")
    assert result.status == "completed"
    assert calls == 1


async def test_a_raising_callback_is_logged_not_raised(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("display crashed")

    with caplog.at_level(logging.ERROR, logger="vibe_planner"):
        result = await make(tmp_path, progress_callback=broken).execute("broken")
    assert result.status == "completed"
    assert "progress callback failed" in caplog.text


async def test_subscribe_streams_events_until_run_finished(tmp_path: Path) -> None:
    planner = make(tmp_path)
    kinds: list[str] = []
    async with planner.subscribe() as events, anyio.create_task_group() as tg:
        tg.start_soon(planner.execute_with_resume, "stream")
        async for event in events:
            kinds.append(event.kind)
            if isinstance(event, RunFinished):
                break
    assert kinds[0] == "plan_created" and kinds[-1] == "run_finished"
    assert kinds.count("node_completed") == 4


async def test_a_reader_that_never_reads_loses_events_not_progress(tmp_path: Path) -> None:
    planner = make(tmp_path, nodes=[node(f"n{i}") for i in range(50)])
    async with planner.subscribe(buffer=3) as events:
        with anyio.fail_after(10):
            result = await planner.execute("no reader")
        received = [events.receive_nowait() for _ in range(3)]
        with pytest.raises(anyio.WouldBlock):
            events.receive_nowait()
    assert result.status == "completed"
    assert isinstance(received[0], PlanCreated)
