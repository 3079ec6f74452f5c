"""Resume: stored results, re-running only unfinished nodes, corrupt files, locks, retention."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, node, random_dag
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWritten,
    MetaPlanner,
    NodeContext,
    NodeError,
    PlanLockedError,
    ProgressEvent,
    TokenUsage,
    Vibe,
    WorkflowPersistenceManager,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """Handlers that count their calls and can be told to fail some nodes."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()

    async def work(self, ctx: NodeContext) -> dict[str, Any]:
        self.calls[ctx.node.id] += 1
        if ctx.node.id in self.failing:
            raise NodeError(f"{ctx.node.id} is down", retryable=False)
        ctx.add_usage(TokenUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15, requests=1))
        return {"id": ctx.node.id, "inputs": sorted(ctx.inputs)}


def planner_for(tmp_path: Path, nodes: list[Any], rec: Recorder, **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": rec.work},
                       persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"), **kwargs)


DIAMOND = [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c"), node("e")]


async def test_completed_plan_returns_the_stored_result(tmp_path: Path) -> None:
    rec = Recorder()
    planner = planner_for(tmp_path, DIAMOND, rec)
    first = await planner.execute_with_resume("diamond")
    count = len(await planner.list_checkpoints())
    second = await planner.execute_with_resume("diamond")
    assert rec.calls == Counter({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    assert second.status == "completed" and second.nodes_run == 0 and second.nodes_restored == 5
    assert second.outputs == first.outputs
    assert second.usage == first.usage
    assert len(await planner.list_checkpoints()) == count  # nothing new written
    assert planner.planner.calls == 1  # type: ignore[attr-defined]


async def test_resume_reruns_only_unfinished_nodes_with_saved_inputs(tmp_path: Path) -> None:
    rec = Recorder()
    rec.failing = {"c"}
    planner = planner_for(tmp_path, DIAMOND, rec)
    first = await planner.execute_with_resume("diamond")
    assert first.status == "failed"
    assert {k: r.status for k, r in first.node_results.items()} == {
        "a": "completed", "b": "completed", "c": "failed", "d": "skipped", "e": "completed"}

    rec.failing = set()
    second = await planner.execute_with_resume("diamond")
    assert second.status == "completed"
    assert rec.calls == Counter({"a": 1, "b": 1, "e": 1, "c": 2, "d": 1})
    assert second.outputs["d"] == {"id": "d", "inputs": ["b", "c"]}
    assert second.nodes_run == 2 and second.nodes_restored == 3
    assert second.resumed_from == first.checkpoints_written[-1]
    # Usage: a, b, e in the first run, c and d in the second; nothing counted twice.
    assert second.usage.requests == 5
    assert planner.planner.calls == 1  # type: ignore[attr-defined]


async def test_resume_from_a_specific_checkpoint(tmp_path: Path) -> None:
    rec = Recorder()
    planner = planner_for(tmp_path, DIAMOND, rec)
    await planner.execute_with_resume("diamond")
    planned = next(i for i in await planner.list_checkpoints() if i.reason == "planned")
    result = await planner.execute_with_resume("diamond", checkpoint_id=planned.checkpoint_id)
    assert result.nodes_run == 5 and result.resumed_from == planned.checkpoint_id
    assert all(count == 2 for count in rec.calls.values())


async def test_resume_by_plan_id_uses_the_stored_vibe(tmp_path: Path) -> None:
    rec = Recorder()
    rec.failing = {"e"}
    planner = planner_for(tmp_path, DIAMOND, rec)
    first = await planner.execute("diamond")
    rec.failing = set()
    result = await planner.resume(first.plan_id)
    assert result.status == "completed" and result.nodes_run == 1
    with pytest.raises(CheckpointNotFoundError):
        await planner.resume("no-such-plan")


async def test_corrupt_latest_raises_and_the_app_can_start_fresh(tmp_path: Path) -> None:
    rec = Recorder()
    planner = planner_for(tmp_path, DIAMOND, rec)
    first = await planner.execute_with_resume("diamond")
    latest = (await planner.list_checkpoints())[0]
    path = Path(latest.path)
    damaged = path.read_bytes()[:-40]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointCorruptError) as info:
        await planner.execute_with_resume("diamond")
    assert info.value.path == path
    assert "JSON" in info.value.reason
    assert path.read_bytes() == damaged  # untouched

    try:
        await planner.execute_with_resume("diamond")
    except CheckpointCorruptError:
        fresh = await planner.execute("diamond")
    assert fresh.status == "completed" and fresh.nodes_run == 5
    assert path.read_bytes() == damaged  # still there, not overwritten
    assert fresh.plan_id == first.plan_id
    assert (await planner.execute_with_resume("diamond")).nodes_run == 0


async def test_another_vibe_on_the_same_plan_id_is_refused(tmp_path: Path) -> None:
    planner = planner_for(tmp_path, DIAMOND, Recorder())
    await planner.execute_with_resume("diamond", plan_id="shared")
    with pytest.raises(CheckpointMismatchError):
        await planner.execute_with_resume("something else", plan_id="shared")


async def test_second_run_of_the_same_plan_in_this_process_is_locked_out(tmp_path: Path) -> None:
    gate = anyio.Event()
    started = anyio.Event()

    async def slow(ctx: NodeContext) -> None:
        started.set()
        await gate.wait()

    planner = MetaPlanner(planner=StaticPlanner([node("a", kind="slow")]), handlers={"slow": slow},
                          persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(planner.execute_with_resume, "locked")
        await started.wait()
        with pytest.raises(PlanLockedError) as info:
            await planner.execute_with_resume("locked")
        assert "this process" in str(info.value)
        gate.set()
    assert (await planner.execute_with_resume("locked")).nodes_run == 0


HOLD_LOCK = """
import sys, time
from vibe_planner import FileCheckpointStore
FileCheckpointStore(sys.argv[1]).lock(sys.argv[2])
print("locked", flush=True)
time.sleep(60)
"""


async def test_lock_held_by_another_process_then_taken_over_after_sigkill(tmp_path: Path) -> None:
    planner = planner_for(tmp_path, DIAMOND, Recorder())
    plan_id = Vibe(description="diamond").default_plan_id()
    args = [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "cp"), plan_id]
    with subprocess.Popen(args, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"locked\n"
            with pytest.raises(PlanLockedError) as info:
                await planner.execute_with_resume("diamond")
            assert f"pid={holder.pid}" in str(info.value)
            assert list((tmp_path / "cp" / plan_id).glob("cp-*")) == []
        finally:
            holder.kill()  # SIGKILL: the holder never releases the lock itself
    result = await planner.execute_with_resume("diamond")
    assert result.status == "completed"


async def test_keep_last_prunes_snapshots_and_journals(tmp_path: Path) -> None:
    # Interval snapshots must not coalesce away, however slow the disk: node 5k+1 starts only
    # once the snapshot asked for after node 5k is durable.
    intervals, written = 0, anyio.Event()
    calls = 0

    def on_event(event: ProgressEvent) -> None:
        nonlocal intervals, written
        if isinstance(event, CheckpointWritten) and event.reason == "interval":
            intervals += 1
            written.set()
            written = anyio.Event()

    async def work(ctx: NodeContext) -> int:
        nonlocal calls
        calls += 1
        turn = calls
        while intervals < (turn - 1) // 5:
            await written.wait()
        return 1

    # Every snapshot a base: K files are exactly the newest K (chains: tests/test_chains.py).
    manager = WorkflowPersistenceManager(tmp_path / "cp", keep_last=2, base_ratio=0)
    planner = MetaPlanner(planner=StaticPlanner(random_dag(60, 1)), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=5, max_concurrency=2,
                          progress_callback=on_event)
    with anyio.fail_after(30):
        first = await planner.execute("prune")
    assert len(first.checkpoints_written) > 4
    infos = await manager.list_checkpoints(first.plan_id)
    assert [i.checkpoint_id for i in infos] == first.checkpoints_written[-2:][::-1]
    journals = sorted(p.name for p in (tmp_path / "cp" / first.plan_id).glob("journal-*"))
    assert journals == [f"journal-{first.run_id}.jsonl"]
    deleted = await manager.prune(first.plan_id, keep_last=1)
    assert deleted == [first.checkpoints_written[-2]]


async def test_manager_operations_without_a_planner(tmp_path: Path) -> None:
    rec = Recorder()
    planner = planner_for(tmp_path, DIAMOND, rec)
    result = await planner.execute("diamond")
    manager = WorkflowPersistenceManager(tmp_path / "cp")
    latest = await manager.latest(result.plan_id)
    assert latest is not None and latest.reason == "final"
    assert sorted(latest.completed_nodes) == ["a", "b", "c", "d", "e"]
    got = await manager.get_checkpoint(latest.checkpoint_id)
    assert got == latest
    await manager.delete_checkpoint(latest.checkpoint_id)
    with pytest.raises(CheckpointNotFoundError):
        await manager.get_checkpoint(latest.checkpoint_id)
    await manager.delete_plan(result.plan_id)
    assert await manager.list_checkpoints() == []
    assert await manager.latest(result.plan_id) is None


async def test_manual_checkpoint_then_resume_from_it(tmp_path: Path) -> None:
    rec = Recorder()
    rec.failing = {"d"}
    planner = planner_for(tmp_path, DIAMOND, rec)
    result = await planner.execute("diamond")
    checkpoint_id = await planner.create_checkpoint(result.plan_id, result, metadata={"note": "x"})
    checkpoint = await planner.get_checkpoint(checkpoint_id)
    assert checkpoint.reason == "manual" and checkpoint.metadata == {"note": "x"}
    assert set(checkpoint.completed_nodes) == {"a", "b", "c", "e"}
    rec.failing = set()
    resumed = await planner.execute_with_resume("diamond", checkpoint_id=checkpoint_id)
    assert resumed.nodes_run == 1 and rec.calls["d"] == 2


async def test_files_are_owner_only_and_documents_look_as_documented(tmp_path: Path) -> None:
    planner = planner_for(tmp_path, DIAMOND, Recorder())
    result = await planner.execute("diamond")
    folder = tmp_path / "cp" / result.plan_id
    assert (tmp_path / "cp").stat().st_mode & 0o777 == 0o700
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    planned = folder / f"{result.checkpoints_written[0]}.json"
    base = orjson.loads(planned.read_bytes())
    assert sorted(base) == sorted([
        "schema_version", "kind", "checkpoint_id", "sequence", "plan_id", "run_id", "created_at",
        "reason", "vibe", "workflow_plan", "completed_nodes", "pending_nodes", "failed_nodes",
        "node_results", "usage", "metadata", "checksum"])
    assert (base["reason"], base["schema_version"], base["kind"]) == ("planned", 2, "base")
    final = folder / f"{result.checkpoints_written[-1]}.json"
    document = orjson.loads(final.read_bytes())
    assert sorted(document) == sorted([
        "schema_version", "kind", "checkpoint_id", "sequence", "plan_id", "run_id", "created_at",
        "reason", "base", "parent", "parent_checksum", "node_results", "journal", "counts",
        "usage", "metadata", "checksum"])
    assert (document["reason"], document["schema_version"], document["kind"]) == ("final", 2, "delta")
    assert document["checksum"].startswith("sha256:")
    assert document["base"] == base["checkpoint_id"]
    assert document["counts"] == {"completed": 5, "failed": 0, "total": 5}
    # Completed results are in the journal (written once); the delta points at them.
    chain = [orjson.loads((folder / f"{i}.json").read_bytes()) for i in result.checkpoints_written[1:]]
    assert [d["parent"] for d in chain] == result.checkpoints_written[:-1]
    pointed = [n for d in chain if d["journal"] for n in d["journal"]["nodes"]]
    journal = (folder / f"journal-{result.run_id}.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line[9:])["result"] for line in journal]
    assert pointed == [r["node_id"] for r in records] and sorted(pointed) == ["a", "b", "c", "d", "e"]
    assert records[pointed.index("d")]["output"] == {"id": "d", "inputs": ["b", "c"]}
    assert all(d["node_results"] == {} for d in chain)
    assert os.path.basename(final).startswith(f"cp-{document['sequence']:08d}-")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        pytest.param({"attempts": "many"}, "attempts", id="attempts-not-int"),
        pytest.param({"started_at": "yesterday"}, "started_at", id="bad-time"),
        pytest.param({"usage": {"total_tokens": "lots"}}, "usage.total_tokens", id="bad-usage"),
    ],
)
async def test_a_journal_record_of_the_wrong_shape_is_a_corrupt_checkpoint(
    tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    # Its CRC is right (written by a buggy or foreign writer, not torn): the resume refuses
    # it with a typed error naming the journal, and runs nothing.
    from vibe_planner.persistence._codec import encode_journal

    rec = Recorder()
    rec.failing = {"d"}
    planner = planner_for(tmp_path, DIAMOND, rec)
    result = await planner.execute_with_resume("diamond")
    assert result.failed_nodes == ["d"]
    journal = tmp_path / "cp" / result.plan_id / f"journal-{result.run_id}.jsonl"
    record = {"node_id": "d", "status": "completed", "output": "ok", "attempts": 1, **change}
    line = encode_journal([{"run": result.run_id, "result": record}])
    await anyio.Path(journal).write_bytes(await anyio.Path(journal).read_bytes() + line)
    rec.failing.clear()
    calls = dict(rec.calls)
    with pytest.raises(CheckpointCorruptError) as info:
        await planner.execute_with_resume("diamond")
    assert info.value.path == journal
    assert "journal record of node 'd'" in info.value.reason and words in info.value.reason
    assert dict(rec.calls) == calls
