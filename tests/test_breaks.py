"""Regression tests for the ten breaks an independent attack found (issue 10).

Scenarios that used to hang run in a child process (`tests/break_worker.py`) with a timeout,
so that a regression fails here instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, node
from vibe_planner import (
    CheckpointCorruptError,
    MetaPlanner,
    NodeContext,
    RetryPolicy,
    Vibe,
    WorkflowPersistenceManager,
)
from vibe_planner.persistence._codec import encode_checkpoint

WORKER = Path(__file__).with_name("break_worker.py")


def scenario(name: str, tmp_path: Path, backend: str = "asyncio") -> tuple[int, dict[str, Any] | None]:
    """Run a scenario of `break_worker.py`; return its exit code and its JSON outcome."""
    args = [sys.executable, str(WORKER), name, backend, str(tmp_path / "cp"), str(tmp_path / "effects.log")]
    try:
        done = subprocess.run(args, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scenario {name} on {backend} hung (no exit after 120 s)")
    lines = done.stdout.decode().splitlines()
    outcome = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    if done.returncode not in (0, -9):
        pytest.fail(f"scenario {name} on {backend} exited {done.returncode}: {done.stderr.decode()[-3000:]}")
    return done.returncode, outcome


def effects(tmp_path: Path) -> list[str]:
    log = tmp_path / "effects.log"
    return log.read_text().splitlines() if log.exists() else []


BACKENDS = [pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")]


# -- 1. a cancelled run never hangs --------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_cancel_while_a_big_snapshot_is_written_returns(tmp_path: Path, backend: str) -> None:
    code, outcome = scenario("cancel_during_big_snapshot", tmp_path, backend)
    assert code == 0 and outcome is not None
    assert outcome["cancelled"] is True
    assert outcome["resumed"] == "completed" and outcome["tail"] == "c"


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancel_at_the_first_event_returns_and_resumes(tmp_path: Path, backend: str) -> None:
    code, outcome = scenario("cancel_at_start", tmp_path, backend)
    assert code == 0 and outcome == {"resumed": "completed"}


# -- 2. a handler's BaseException stops the run, is raised, and leaves a checkpoint ---------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_handler_base_exception_is_raised_not_hung(tmp_path: Path, backend: str) -> None:
    code, outcome = scenario("base_exception", tmp_path, backend)
    assert code == 0 and outcome is not None
    assert outcome["raised"] == "Boom"
    assert outcome["latest_reason"] == "cancelled"
    assert outcome["resumed"] == "completed"
    assert outcome["restored"] == 1  # a completed before b raised; it did not run again
    assert effects(tmp_path).count("a") == 1


# -- 3. completed means every node completed ----------------------------------------------------
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_cancellation_leaked_by_a_handler_fails_the_node(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> str:
        if ctx.node.id == "b":
            task = asyncio.ensure_future(asyncio.sleep(3600))
            task.cancel()
            await task  # raises CancelledError into the handler: nothing cancelled the run
        return ctx.node.id

    manager = WorkflowPersistenceManager(tmp_path / "cp")
    chain = [node("a"), node("b", "a"), node("c", "b")]
    planner = MetaPlanner(planner=StaticPlanner(chain), handlers={"work": work},
                          persistence_manager=manager, retry=RetryPolicy(max_attempts=1))
    result = await planner.execute_with_resume("leaked cancel")
    assert result.status == "failed"
    assert result.node_results["b"].status == "failed"
    assert result.node_results["b"].error is not None
    assert result.node_results["b"].error.type == "StrayCancellationError"
    assert result.node_results["c"].status == "skipped"
    final = await manager.latest(result.plan_id)
    assert final is not None and final.failed_nodes == ["b"] and final.completed_nodes == ["a"]


# -- 5. a SIGKILL inside a resumed run's first snapshot re-runs nothing recorded ----------------------
def test_kill_inside_the_resumed_snapshot_never_reruns_journaled_nodes(tmp_path: Path) -> None:
    folder = tmp_path / "cp" / Vibe(description="wide").default_plan_id()
    code, _ = scenario("kill_in_interval_snapshot", tmp_path)
    assert code == -9
    assert journaled(folder), "the first run journaled nothing before it was killed"
    code, _ = scenario("kill_in_resumed_snapshot", tmp_path)
    assert code == -9
    note = orjson.loads((tmp_path / "kill.json").read_bytes())
    # Precondition, not a race: instant handlers complete a streak of nodes before the writer's
    # first batch, so the dying run's journal holds fsynced records before its first snapshot.
    assert note["journal_results"] > 0
    recorded = journaled(folder)
    before = len(effects(tmp_path))
    code, outcome = scenario("finish", tmp_path)
    assert code == 0 and outcome is not None and outcome["status"] == "completed"
    rerun = set(effects(tmp_path)[before:]) & recorded
    assert not rerun, f"journaled nodes ran again: {sorted(rerun)}"
    assert outcome["restored"] == len(recorded)


def journaled(folder: Path) -> set[str]:
    """Nodes with an intact record in any journal of the plan (read without the library)."""
    done = set()
    for journal in folder.glob("journal-*.jsonl"):
        for line in journal.read_bytes().split(b"\n")[:-1]:
            crc, _, payload = line.partition(b" ")
            if int(crc, 16) != zlib.crc32(payload):
                break
            entry = orjson.loads(payload)
            if "result" in entry:
                done.add(entry["result"]["node_id"])
    return done


def node_list() -> list[Any]:
    return [node(f"w{i:03d}") for i in range(80)] + [node("sink")]


# -- 6. a manual checkpoint means exactly the state it was given ------------------------------------
def test_manual_checkpoint_after_a_crash_ignores_the_crashed_runs_journal(tmp_path: Path) -> None:
    code, _ = scenario("kill_in_interval_snapshot", tmp_path)
    assert code == -9 and effects(tmp_path)
    manager = WorkflowPersistenceManager(tmp_path / "cp")
    plan_id = Vibe(description="wide").default_plan_id()
    ran: list[str] = []

    async def work(ctx: NodeContext) -> str:
        ran.append(ctx.node.id)
        return ctx.node.id

    async def roll_back_and_resume() -> tuple[str, Any]:
        (planned,) = await manager.list_checkpoints(plan_id)
        checkpoint = await manager.get_checkpoint(planned.checkpoint_id)
        assert checkpoint.reason == "planned" and not checkpoint.completed_nodes
        planner = MetaPlanner(planner=StaticPlanner(node_list()), handlers={"work": work},
                              persistence_manager=manager)
        manual = await planner.create_checkpoint(plan_id, checkpoint)
        return manual, await planner.execute_with_resume("wide")

    manual, result = anyio.run(roll_back_and_resume)
    assert result.resumed_from == manual
    assert result.nodes_restored == 0  # the manual checkpoint had no completed node
    assert sorted(ran) == sorted(n.id for n in node_list())


# -- 9. a handler that mutates its inputs changes nobody else's ----------------------------------------
@pytest.mark.anyio
async def test_mutated_inputs_do_not_leak_into_other_nodes_or_the_result(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> Any:
        if ctx.node.id == "src":
            return [1, 2, 3]
        values = ctx.inputs["src"]
        if ctx.node.id == "greedy":
            values.append(99)  # mutates its own copy only
            return sum(values)
        return sum(values)

    nodes = [node("src"), node("greedy", "src"), node("b", "src")]
    manager = WorkflowPersistenceManager(tmp_path / "cp")
    planner = MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": work},
                          persistence_manager=manager, max_concurrency=1)
    result = await planner.execute_with_resume("mutating inputs")
    assert result.node_results["src"].output == [1, 2, 3]
    assert result.node_results["greedy"].output == 105
    assert result.node_results["b"].output == 6
    final = await manager.latest(result.plan_id)
    assert final is not None and final.node_results["src"].output == [1, 2, 3]


@pytest.mark.anyio
async def test_a_retried_attempt_gets_fresh_inputs(tmp_path: Path) -> None:
    seen: list[list[int]] = []

    async def work(ctx: NodeContext) -> Any:
        if ctx.node.id == "src":
            return [1]
        values = ctx.inputs["src"]
        seen.append(list(values))
        values.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("try again")
        return values

    planner = MetaPlanner(planner=StaticPlanner([node("src"), node("b", "src")]), handlers={"work": work},
                          persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                          retry=RetryPolicy(max_attempts=2, initial_delay=0))
    result = await planner.execute_with_resume("retry inputs")
    assert seen == [[1], [1]]
    assert result.node_results["b"].output == [1, 2]


# -- 10. a signed checkpoint that omits a node is corrupt, not a KeyError ------------------------------
@pytest.mark.anyio
async def test_a_final_checkpoint_missing_a_node_is_corrupt(tmp_path: Path) -> None:
    async def work(ctx: NodeContext) -> str:
        return ctx.node.id

    manager = WorkflowPersistenceManager(tmp_path / "cp", base_ratio=0)  # whole documents
    planner = MetaPlanner(planner=StaticPlanner([node("a"), node("b", "a")]), handlers={"work": work},
                          persistence_manager=manager)
    result = await planner.execute_with_resume("missing result")
    final = result.checkpoints_written[-1]
    path = tmp_path / "cp" / result.plan_id / f"{final}.json"
    document = orjson.loads(path.read_bytes())
    document.pop("checksum")
    document["completed_nodes"].remove("b")
    del document["node_results"]["b"]
    path.write_bytes(encode_checkpoint(document))  # re-signed: the checksum is valid
    with pytest.raises(CheckpointCorruptError) as caught:
        await planner.execute_with_resume("missing result")
    assert caught.value.path == path
    assert "['b']" in caught.value.reason
    with pytest.raises(CheckpointCorruptError):
        await manager.get_checkpoint(final)


# -- smaller: the manager's cache of run ids is bounded, and eviction does not confuse retention ------
@pytest.mark.anyio
async def test_run_id_cache_is_bounded_and_retention_survives_eviction(tmp_path: Path) -> None:
    from vibe_planner.persistence._retention import RunIds as _RunIds

    async def work(ctx: NodeContext) -> str:
        return ctx.node.id

    # Every snapshot a base, so that keep_last=2 keeps exactly two (chains: tests/test_chains.py).
    manager = WorkflowPersistenceManager(tmp_path / "cp", keep_last=2, base_ratio=0)
    manager._run_of = _RunIds(capacity=4)
    manager._base_of = _RunIds(capacity=4)
    planner = MetaPlanner(planner=StaticPlanner([node("a"), node("b", "a")]), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=1)
    for i in range(12):
        result = await planner.execute_with_resume(f"plan {i}")
        assert result.status == "completed"
        assert len(manager._run_of) <= 4 and len(manager._base_of) <= 4
    for i in range(12):
        plan_id = Vibe(description=f"plan {i}").default_plan_id()
        infos = await manager.list_checkpoints(plan_id)
        assert [info.reason for info in infos] == ["final", "interval"]
        journals = sorted(p.name for p in (tmp_path / "cp" / plan_id).glob("journal-*"))
        run_ids = {(await manager.get_checkpoint(info.checkpoint_id)).run_id for info in infos}
        assert journals == sorted(f"journal-{r}.jsonl" for r in run_ids)
