"""The scheduler: eager starts, concurrency limit, retries, timeouts, failure policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import StaticPlanner, node, random_dag
from vibe_planner import (
    MetaPlanner,
    NodeContext,
    NodeError,
    NodeStatus,
    PlanValidationError,
    RetryPolicy,
    WorkflowPersistenceManager,
)

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.01)


def make(tmp_path: Path, nodes: list[Any], handlers: dict[str, Any], **kwargs: Any) -> MetaPlanner:
    kwargs.setdefault("retry", FAST_RETRY)
    return MetaPlanner(
        planner=StaticPlanner(nodes),
        handlers=handlers,
        persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
        **kwargs,
    )


async def test_fast_branch_is_not_held_back_by_a_slow_one(tmp_path: Path) -> None:
    # The slow node can only finish once the *last* node of the fast chain has run. A scheduler
    # working in lock-step waves would wait for "slow" before starting fast-2, and deadlock.
    fast_done = anyio.Event()
    order: list[str] = []

    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "slow":
            await fast_done.wait()
        elif ctx.node.id == "fast-5":
            fast_done.set()
        order.append(ctx.node.id)
        return ctx.node.id

    nodes = [node("slow"), node("fast-1")] + [node(f"fast-{i}", f"fast-{i - 1}") for i in range(2, 6)]
    nodes.append(node("join", "slow", "fast-5"))
    planner = make(tmp_path, nodes, {"work": work})
    with anyio.fail_after(10):
        result = await planner.execute("uneven")
    assert result.status == "completed"
    assert order.index("fast-5") < order.index("slow") < order.index("join")


async def test_uneven_durations_overlap(tmp_path: Path) -> None:
    # A long node is in flight while a whole chain of short ones runs: the chain only starts
    # once the long node has started, and the long node only ends once the chain's sink ran.
    # (Events, not durations: on a loaded machine a "fast" chain may take longer than any
    # sleep chosen for the "slow" node.)
    slow_started, chain_done = anyio.Event(), anyio.Event()
    finished: list[str] = []

    async def work(ctx: NodeContext) -> None:
        if ctx.node.id == "slow":
            slow_started.set()
            await chain_done.wait()
        elif ctx.node.id == "f1":
            await slow_started.wait()
        elif ctx.node.id == "f4":
            chain_done.set()
        finished.append(ctx.node.id)

    nodes = [node("slow"), node("f1"), node("f2", "f1"), node("f3", "f2"), node("f4", "f3")]
    with anyio.fail_after(10):
        await make(tmp_path, nodes, {"work": work}).execute("overlap")
    assert finished == ["f1", "f2", "f3", "f4", "slow"]


async def test_max_concurrency_is_respected_and_reached(tmp_path: Path) -> None:
    running = 0
    peak = 0
    gate = anyio.Event()

    async def work(ctx: NodeContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if peak == 4:
            gate.set()
        await gate.wait()
        running -= 1

    nodes = [node(f"n{i}") for i in range(20)]
    result = await make(tmp_path, nodes, {"work": work}, max_concurrency=4).execute("limit")
    assert result.status == "completed"
    assert peak == 4


@pytest.mark.parametrize("durability", ["none", "journal"])
async def test_workers_join_as_ready_nodes_need_them(tmp_path: Path, durability: str) -> None:
    # Each wave's nodes wait until the whole wave has started, and each wave depends on the
    # one before: every wave needs its full width of workers at once. The pool starts with one
    # worker, so it must grow mid-run (in several steps for the 12-wide wave), and wake its
    # idle workers for the later waves; a pool that fell short would deadlock here.
    widths = [1, 3, 12, 2, 12, 1]
    started = [0] * len(widths)
    full = [anyio.Event() for _ in widths]
    running = peak = 0

    async def work(ctx: NodeContext) -> None:
        nonlocal running, peak
        wave = int(ctx.node.parameters["wave"])  # type: ignore[call-overload]
        running += 1
        peak = max(peak, running)
        started[wave] += 1
        if started[wave] == widths[wave]:
            full[wave].set()
        await full[wave].wait()
        running -= 1

    nodes: list[Any] = []
    previous: list[str] = []
    for wave, width in enumerate(widths):
        ids = [f"w{wave}-{i}" for i in range(width)]
        nodes += [node(node_id, *previous, wave=wave) for node_id in ids]
        previous = ids
    planner = make(tmp_path, nodes, {"work": work}, max_concurrency=12, durability=durability)
    with anyio.fail_after(10):
        result = await planner.execute("waves")
    assert result.status == "completed"
    assert result.nodes_run == sum(widths)
    assert peak == 12


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_handlers_that_never_wait_still_let_other_tasks_run(
    tmp_path: Path, concurrency: int
) -> None:
    # 640 nodes whose handler returns at once: without the scheduler yielding now and then,
    # the run would hold the event loop from start to end and the ticker would not move.
    ran = 0
    ticks_seen: list[int] = []
    ticks = 0

    async def instant(ctx: NodeContext) -> int:
        nonlocal ran
        ran += 1
        ticks_seen.append(ticks)
        return ran

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    nodes = [node(f"n{i}", *([f"n{i - 1}"] if i % 2 else [])) for i in range(640)]
    planner = make(tmp_path, nodes, {"work": instant}, max_concurrency=concurrency,
                   durability="none")
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await planner.execute("instant")
        tg.cancel_scope.cancel()
    assert result.status == "completed" and ran == 640
    # The ticker ran between nodes many times over, not just before the first and after the last.
    assert len(set(ticks_seen)) >= 640 // 32 // 2, len(set(ticks_seen))


async def test_retries_then_succeeds_with_attempt_numbers(tmp_path: Path) -> None:
    seen: list[int] = []

    async def flaky(ctx: NodeContext) -> str:
        seen.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("transient")
        return "ok"

    result = await make(tmp_path, [node("a", kind="flaky")], {"flaky": flaky}).execute("retry")
    assert seen == [1, 2, 3]
    assert result.node_results["a"].status == NodeStatus.COMPLETED
    assert result.node_results["a"].attempts == 3


async def test_backoff_waits_between_attempts(tmp_path: Path) -> None:
    times: list[float] = []

    async def failing(ctx: NodeContext) -> None:
        times.append(anyio.current_time())
        raise RuntimeError("nope")

    retry = RetryPolicy(max_attempts=3, initial_delay=0.05, multiplier=2, jitter=0)
    result = await make(tmp_path, [node("a", kind="f")], {"f": failing}, retry=retry).execute("x")
    assert result.status == "failed"
    assert times[1] - times[0] >= 0.045
    assert times[2] - times[1] >= 0.095


async def test_permanent_error_fails_at_once(tmp_path: Path) -> None:
    calls = 0

    async def bad(ctx: NodeContext) -> None:
        nonlocal calls
        calls += 1
        raise NodeError("401 unauthorized", retryable=False)

    result = await make(tmp_path, [node("a", kind="bad")], {"bad": bad}).execute("perm")
    assert calls == 1
    error = result.node_results["a"].error
    assert error is not None and error.type == "NodeError" and not error.retryable


async def test_timeout_per_node(tmp_path: Path) -> None:
    async def hang(ctx: NodeContext) -> None:
        await anyio.sleep_forever()

    nodes = [node("a", kind="hang").model_copy(update={"timeout": 0.05, "max_attempts": 2})]
    with anyio.fail_after(5):
        result = await make(tmp_path, nodes, {"hang": hang}).execute("timeout")
    record = result.node_results["a"]
    assert record.status == NodeStatus.FAILED
    assert record.attempts == 2
    assert record.error is not None and record.error.type == "TimeoutError"


async def test_failure_skips_dependents_and_keeps_independent_branches(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "bad":
            raise NodeError("broken", retryable=False)
        return ctx.node.id

    nodes = [node("bad"), node("child", "bad"), node("grandchild", "child"),
             node("other"), node("other-2", "other")]
    result = await make(tmp_path, nodes, {"work": work}).execute("partial")
    statuses = {k: r.status for k, r in result.node_results.items()}
    assert result.status == "failed"
    assert statuses == {"bad": "failed", "child": "skipped", "grandchild": "skipped",
                        "other": "completed", "other-2": "completed"}
    assert result.failed_nodes == ["bad"]


async def test_fail_fast_cancels_the_rest(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> None:
        if ctx.node.id == "bad":
            raise NodeError("broken", retryable=False)
        await anyio.sleep_forever()

    nodes = [node("bad"), node("hang-1"), node("hang-2"), node("after", "hang-1")]
    with anyio.fail_after(5):
        result = await make(tmp_path, nodes, {"work": work}, fail_fast=True).execute("ff")
    statuses = {k: r.status for k, r in result.node_results.items()}
    assert result.status == "failed"
    assert statuses == {"bad": "failed", "hang-1": "cancelled", "hang-2": "cancelled",
                        "after": "pending"}


async def test_context_carries_inputs_vibe_and_idempotency_key(tmp_path: Path) -> None:
    contexts: dict[str, NodeContext] = {}

    async def work(ctx: NodeContext) -> dict[str, Any]:
        contexts[ctx.node.id] = ctx
        return {"from": ctx.node.id, "n": len(ctx.inputs)}

    nodes = [node("a"), node("b"), node("c", "a", "b")]
    result = await make(tmp_path, nodes, {"work": work}).execute("ctx")
    c = contexts["c"]
    assert c.inputs == {"a": {"from": "a", "n": 0}, "b": {"from": "b", "n": 0}}
    assert c.vibe.description == "ctx"
    assert c.idempotency_key == f"{result.plan_id}:c"
    assert c.attempt == 1
    assert result.outputs == {"c": {"from": "c", "n": 2}}


async def test_output_that_is_not_json_fails_the_node_with_its_name(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> object:
        return {"when": object()}

    result = await make(tmp_path, [node("weird")], {"work": work}).execute("json")
    error = result.node_results["weird"].error
    assert error is not None and error.type == "NodeOutputError"
    assert "'weird'" in error.message
    assert result.node_results["weird"].attempts == 1


async def test_unknown_kind_is_rejected_before_running(tmp_path: Path) -> None:
    planner = make(tmp_path, [node("a", kind="mystery")], {})
    with pytest.raises(PlanValidationError) as info:
        await planner.execute("kinds")
    assert info.value.node_ids == ["a"]
    assert "mystery" in str(info.value)


async def test_cancellation_writes_a_cancelled_checkpoint_and_propagates(tmp_path: Path) -> None:
    started = anyio.Event()

    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "hang":
            started.set()
            await anyio.sleep_forever()
        return ctx.node.id

    manager = WorkflowPersistenceManager(tmp_path / "cp")
    planner = MetaPlanner(planner=StaticPlanner([node("quick"), node("hang", "quick")]),
                          handlers={"work": work}, persistence_manager=manager)
    outcome: list[str] = []

    async def run() -> None:
        try:
            await planner.execute("cancel me")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]
    infos = await manager.list_checkpoints()
    assert infos[0].reason == "cancelled"
    checkpoint = await manager.get_checkpoint(infos[0].checkpoint_id)
    assert checkpoint.completed_nodes == ["quick"]
    assert checkpoint.node_results["hang"].status == NodeStatus.CANCELLED
    assert checkpoint.pending_nodes == ["hang"]


_BEHAVIOURS = ("instant", "yield", "sleep", "fail")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(1, 40),
    concurrency=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    behaviours=st.lists(st.sampled_from(_BEHAVIOURS), min_size=40, max_size=40),
    fail_fast=st.booleans(),
    durability=st.sampled_from(["none", "interval", "journal"]),
)
def test_property_any_dag_runs_each_node_once_in_order_within_the_limit(
    tmp_path_factory: pytest.TempPathFactory, size: int, concurrency: int, seed: int,
    behaviours: list[str], fail_fast: bool, durability: str,
) -> None:
    # Handlers that return at once, yield, sleep or fail, in any mix: the pool (which grows
    # and shrinks on demand) must never stall, never exceed the limit, start a node only after
    # its dependencies completed, and run each node at most once.
    nodes = random_dag(size, seed)
    kind_of = {n.id: behaviours[i] for i, n in enumerate(nodes)}
    deps_of = {n.id: n.depends_on for n in nodes}
    completed: set[str] = set()
    started: list[str] = []
    running = peak = 0

    async def work(ctx: NodeContext) -> str:
        nonlocal running, peak
        node_id = ctx.node.id
        assert all(dep in completed for dep in deps_of[node_id]), node_id
        started.append(node_id)
        running += 1
        peak = max(peak, running)
        try:
            behaviour = kind_of[node_id]
            if behaviour == "yield":
                await anyio.lowlevel.checkpoint()
            elif behaviour == "sleep":
                await anyio.sleep(0.001)
            elif behaviour == "fail":
                raise NodeError(f"{node_id} fails", retryable=False)
        finally:
            running -= 1
        completed.add(node_id)
        return node_id

    folder = tmp_path_factory.mktemp("prop")

    async def main() -> Any:
        planner = make(folder, nodes, {"work": work}, max_concurrency=concurrency,
                       durability=durability, fail_fast=fail_fast, checkpoint_interval=2)
        with anyio.fail_after(20):
            return await planner.execute_with_resume("property")

    result = anyio.run(main)
    failing = "fail" in kind_of.values()
    assert result.status == ("failed" if failing else "completed")
    for node_id, status in ((k, r.status) for k, r in result.node_results.items()):
        if node_id in completed:
            assert status == NodeStatus.COMPLETED
        elif kind_of[node_id] == "fail" and node_id in started:
            assert status == NodeStatus.FAILED
        elif fail_fast:  # the run stopped at the first failure
            assert status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED, NodeStatus.PENDING)
        else:  # a dependency failed, directly or further up
            assert status == NodeStatus.SKIPPED, (node_id, status)
    assert len(started) == len(set(started))
    assert peak <= concurrency
    if durability == "none" or result.status == "completed":
        return
    # Resume once the failing nodes are fixed: what completed never runs again, the rest does.
    first_run = set(completed)
    started.clear()
    kind_of.update((k, "instant") for k, v in kind_of.items() if v == "fail")
    again = anyio.run(main)
    assert again.status == "completed"
    assert not first_run & set(started)
    assert set(started) | first_run == set(deps_of)
    assert again.nodes_restored == len(first_run)


async def test_a_failure_without_checkpoints_is_a_failed_result(tmp_path: Path) -> None:
    # Regression: with durability "none", a failed node used to ask the (disabled) writer for
    # a "failure" snapshot, and the run died on an internal assertion instead.
    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "bad":
            raise NodeError("broken", retryable=False)
        return ctx.node.id

    nodes = [node("ok"), node("bad"), node("after", "bad")]
    result = await make(tmp_path, nodes, {"work": work}, durability="none").execute("no cps")
    assert result.status == "failed"
    assert {k: r.status for k, r in result.node_results.items()} == {
        "ok": "completed", "bad": "failed", "after": "skipped"}
    assert result.checkpoints_written == []
    assert not (tmp_path / "cp").exists()
