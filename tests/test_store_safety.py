"""The file store under attack: deletes racing runs, clocks stepping back, umasks, foreign folders."""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, node, random_dag
from vibe_planner import (
    CheckpointError,
    FileCheckpointStore,
    MetaPlanner,
    NodeContext,
    NodeError,
    PlanLockedError,
    UnsafeCheckpointFolderError,
    Vibe,
    WorkflowNode,
    WorkflowPersistenceManager,
)
from vibe_planner.cli._app import exit_code
from vibe_planner.cli._commands import EXIT_CORRUPT
from vibe_planner.persistence._codec import encode_checkpoint

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


async def work(ctx: NodeContext) -> str:
    return ctx.node.id


def planner_for(root: Path, nodes: Sequence[WorkflowNode] = (), **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(planner=StaticPlanner(nodes or random_dag(3, 1)), handlers={"work": work},
                       persistence_manager=WorkflowPersistenceManager(root), **kwargs)


# -- 1. delete_plan racing runs that are starting -------------------------------------------------

DELETERS, DELETES_EACH = 2, 150
RUNNERS, RUNS_EACH = 2, 60


def test_delete_plan_racing_starting_runs_is_all_or_nothing(tmp_path: Path) -> None:
    """Deletes loop against runs that keep starting: every call succeeds or is refused with
    `PlanLockedError`, and what is left is either no folder or a complete plan folder."""
    root, vibe = tmp_path / "cp", "delete me while I start"
    plan_id = Vibe(description=vibe).default_plan_id()
    tally: Counter[str] = Counter()

    def deleter() -> None:
        manager = WorkflowPersistenceManager(root)  # one manager per thread, as per process

        async def loop() -> None:
            for _ in range(DELETES_EACH):
                try:
                    await manager.delete_plan(plan_id)
                    tally["deleted"] += 1
                except PlanLockedError:
                    tally["delete refused"] += 1

        anyio.run(loop)

    def runner() -> None:
        planner = planner_for(root, checkpoint_interval=1)

        async def loop() -> None:
            for _ in range(RUNS_EACH):
                try:
                    result = await planner.execute_with_resume(vibe)
                except PlanLockedError:
                    tally["run refused"] += 1
                else:
                    assert result.status == "completed"
                    tally["ran" if result.nodes_run else "resumed"] += 1

        anyio.run(loop)

    with ThreadPoolExecutor(DELETERS + RUNNERS) as pool:
        futures = [pool.submit(deleter) for _ in range(DELETERS)]
        futures += [pool.submit(runner) for _ in range(RUNNERS)]
        for future in futures:
            future.result()  # re-raises whatever else a call raised (a raw OSError, say)
    assert sum(tally.values()) == DELETERS * DELETES_EACH + RUNNERS * RUNS_EACH, tally

    manager = WorkflowPersistenceManager(root)
    if (root / plan_id).exists():
        latest = anyio.run(manager.latest, plan_id)
        assert latest is not None and latest.reason == "final" and not latest.pending_nodes
        assert anyio.run(manager.verify, plan_id) == []
    anyio.run(manager.delete_plan, plan_id)
    assert os.listdir(root) == []  # no plan folder, no tombstone


def test_deleting_a_running_plan_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cp"
    started, release = anyio.Event(), anyio.Event()

    async def slow(ctx: NodeContext) -> str:
        started.set()
        await release.wait()
        return ctx.node.id

    planner = MetaPlanner(planner=StaticPlanner([node("a", kind="slow")]), handlers={"slow": slow},
                          persistence_manager=WorkflowPersistenceManager(root))
    other = WorkflowPersistenceManager(root)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(planner.execute_with_resume, "running")
            await started.wait()
            for manager in (planner.persistence_manager, other):
                with pytest.raises(PlanLockedError):
                    await manager.delete_plan(Vibe(description="running").default_plan_id())
            release.set()

    anyio.run(main)
    plan_id = Vibe(description="running").default_plan_id()
    latest = anyio.run(other.latest, plan_id)
    assert latest is not None and latest.reason == "final"


def test_a_crashed_delete_leaves_a_tombstone_the_next_delete_or_run_removes(tmp_path: Path) -> None:
    root = tmp_path / "cp"
    planner = planner_for(root)
    plan_id = anyio.run(planner.execute_with_resume, "tombstones").plan_id
    # What a delete killed right after its rename leaves: a hidden, partly emptied folder.
    for name, hexes in (("a", "0123456789ab"), (plan_id, "ba9876543210")):
        tombstone = root / f".{name}.deleting-{hexes}"
        tombstone.mkdir(mode=0o700)
        (tombstone / "cp-00000001-0123456789ab.json").write_bytes(b"{}")
        (tombstone / ".lock").write_bytes(b"")
    unrelated = root / ".not-a-tombstone"
    unrelated.mkdir()
    manager = planner.persistence_manager
    assert [i.plan_id for i in anyio.run(manager.list_checkpoints)] == [plan_id] * 2

    anyio.run(planner.execute_with_resume, "tombstones")  # the lock sweeps this plan's own
    assert sorted(os.listdir(root)) == [".a.deleting-0123456789ab", ".not-a-tombstone", plan_id]
    anyio.run(manager.delete_plan, plan_id)  # a delete sweeps them all
    assert sorted(os.listdir(root)) == [".not-a-tombstone"]


def test_a_lock_whose_folder_was_renamed_away_is_not_held(tmp_path: Path) -> None:
    """A lock on a file that no longer has the lock's path is no lock: the next run starts
    on a fresh folder instead of being refused by (or sharing) the orphan."""
    store = FileCheckpointStore(tmp_path / "cp")
    first = store.lock("p")
    os.rename(tmp_path / "cp" / "p", tmp_path / "cp" / ".p.deleting-0123456789ab")
    second = store.lock("p")  # the orphan is still held by `first`; the path names a new file
    assert os.listdir(tmp_path / "cp") == ["p"]  # ...and the orphan's tombstone was swept
    with pytest.raises(PlanLockedError):
        store.lock("p")
    first.release()
    second.release()


# -- 2. newest first follows the sequence, not the wall clock -------------------------------------


def step_clock_back(folder: Path, after_sequence: int, by: timedelta) -> None:
    """Re-sign the checkpoints above *after_sequence* as if written with the clock set back."""
    for path in folder.glob("cp-*.json"):
        document = orjson.loads(path.read_bytes())
        if document["sequence"] > after_sequence:
            del document["checksum"]
            written = datetime.fromisoformat(document["created_at"])
            document["created_at"] = (written - by).isoformat()
            path.write_bytes(encode_checkpoint(document))


def test_newest_first_follows_the_sequence_when_the_clock_steps_back(tmp_path: Path) -> None:
    root = tmp_path / "cp"
    planner = planner_for(root)
    result = anyio.run(planner.execute, "clock")
    plan_id, manager = result.plan_id, planner.persistence_manager
    while len(anyio.run(manager.list_checkpoints, plan_id)) < 6:
        anyio.run(planner.create_checkpoint, plan_id, result)
    step_clock_back(root / plan_id, 3, timedelta(days=1))
    # Another plan written in between, by the correct clock.
    other = anyio.run(planner_for(root).execute, "another plan").plan_id

    infos = anyio.run(manager.list_checkpoints, plan_id)
    latest = anyio.run(manager.latest, plan_id)
    assert latest is not None
    sequences = [i.sequence for i in infos]
    assert sequences == sorted(sequences, reverse=True) and len(set(sequences)) == len(sequences)
    assert infos[0].checkpoint_id == latest.checkpoint_id

    # Across plans, a plan's checkpoints stay together, newest first; the docs' example holds.
    everything = anyio.run(manager.list_checkpoints)
    plans = [i.plan_id for i in everything]
    assert plans == sorted(plans, key=plans.index) and set(plans) == {plan_id, other}
    assert [i for i in everything if i.plan_id == plan_id] == infos
    newest = everything[0]
    newest_latest = anyio.run(manager.latest, newest.plan_id)
    assert newest_latest is not None and newest_latest.checkpoint_id == newest.checkpoint_id

    # Resuming from the first listed checkpoint re-runs nothing.
    resumed = anyio.run(lambda: planner.execute_with_resume("clock", checkpoint_id=infos[0].checkpoint_id))
    assert resumed.nodes_run == 0


def test_plans_come_most_recently_active_first(tmp_path: Path) -> None:
    root = tmp_path / "cp"
    older = anyio.run(planner_for(root).execute, "older").plan_id
    newer = anyio.run(planner_for(root).execute, "newer").plan_id
    step_clock_back(root / older, 0, timedelta(days=2))
    step_clock_back(root / newer, 0, timedelta(days=1))
    (root / "zz-damaged").mkdir(mode=0o700)
    (root / "zz-damaged" / "cp-00000009-0123456789ab.json").write_bytes(b"{")
    manager = WorkflowPersistenceManager(root)
    plans = list(dict.fromkeys(i.plan_id for i in anyio.run(manager.list_checkpoints)))
    assert plans == [newer, older, "zz-damaged"]


# -- 3. modes whatever the umask ------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o277, 0o077, 0o000], ids=["umask-277", "umask-077", "umask-000"])
def test_modes_are_0600_and_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "cp"
    old = os.umask(umask)
    try:
        result = anyio.run(planner_for(root, random_dag(12, 3), checkpoint_interval=4).execute, "umask")
        store = FileCheckpointStore(root / "made-by-a-lock")
        store.lock("plan").release()
        store.append("plan", "journal-x.jsonl", b"{}\n")
    finally:
        os.umask(old)
    assert result.status == "completed"
    made = [root, root / result.plan_id, root / "made-by-a-lock", root / "made-by-a-lock" / "plan"]
    paths = sorted({*made, *root.rglob("*")})
    names = {p.name for p in paths}
    assert {".lock", "journal-x.jsonl"} <= names and any(n.startswith("cp-") for n in names)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode) for p in paths}
    assert modes == {k: 0o700 if (tmp_path / k).is_dir() else 0o600 for k in modes}


# -- 4. folders and files someone else could have written -----------------------------------------


def chmod(mode: int) -> Callable[[Path], None]:
    return lambda path: path.chmod(mode)


def chown_nobody(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


def newest_file(folder: Path) -> Path:
    return max(folder.glob("cp-*.json"))


TAMPERING = [
    pytest.param(lambda root, plan: root / plan, chmod(0o777), "writable by group and others",
                 id="plan-folder-0777"),
    pytest.param(lambda root, plan: root / plan, chmod(0o770), "writable by group",
                 id="plan-folder-0770"),
    pytest.param(lambda root, plan: root, chmod(0o707), "writable by others", id="root-0707"),
    pytest.param(lambda root, plan: newest_file(root / plan), chmod(0o666), "writable by group and others",
                 id="newest-file-0666"),
    pytest.param(lambda root, plan: root / plan, chown_nobody, f"owned by uid {NOBODY}",
                 id="plan-folder-of-nobody", marks=as_root),
    pytest.param(lambda root, plan: root, chown_nobody, f"owned by uid {NOBODY}",
                 id="root-of-nobody", marks=as_root),
    pytest.param(lambda root, plan: newest_file(root / plan), chown_nobody, f"owned by uid {NOBODY}",
                 id="newest-file-of-nobody", marks=as_root),
]


@pytest.mark.parametrize(("target", "tamper", "reason"), TAMPERING)
def test_unsafe_folders_and_files_are_refused(
    tmp_path: Path, target: Callable[[Path, str], Path], tamper: Callable[[Path], None], reason: str
) -> None:
    root = tmp_path / "cp"
    calls: Counter[str] = Counter()

    async def counting(ctx: NodeContext) -> str:
        calls[ctx.node.id] += 1
        return ctx.node.id

    nodes = [node("a"), node("b", "a"), node("c", "b", kind="stop")]

    async def stop(ctx: NodeContext) -> str:
        raise NodeError("not yet", retryable=False)

    planner = MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": counting, "stop": stop},
                          persistence_manager=WorkflowPersistenceManager(root))
    first = anyio.run(planner.execute, "foreign")
    assert first.status == "failed"
    path = target(root, first.plan_id)
    tamper(path)
    before = sorted(os.listdir(root / first.plan_id))
    manager = planner.persistence_manager

    def refused(call: Callable[[], Awaitable[object]]) -> UnsafeCheckpointFolderError:
        with pytest.raises(UnsafeCheckpointFolderError) as info:
            anyio.run(call)
        assert info.value.path == path and reason in info.value.reason, info.value
        return info.value

    error = refused(lambda: planner.execute_with_resume("foreign"))
    assert isinstance(error, CheckpointError) and isinstance(error, PermissionError)
    assert str(path) in str(error) and exit_code(error) == EXIT_CORRUPT
    refused(lambda: manager.latest(first.plan_id))
    refused(lambda: manager.restore(first.plan_id))
    refused(lambda: planner.resume(first.plan_id))
    infos = anyio.run(manager.list_checkpoints, first.plan_id)  # listing says why, and goes on
    flagged = [i for i in infos if path.is_dir() or Path(i.path) == path]
    assert flagged and all(i.error is not None and reason in i.error for i in flagged)
    assert calls == Counter({"a": 1, "b": 1})  # nothing ran again
    assert sorted(os.listdir(root / first.plan_id)) == before  # nothing was written


def test_root_owned_and_own_folders_are_fine(tmp_path: Path) -> None:
    root = tmp_path / "cp"
    planner = planner_for(root)
    first = anyio.run(planner.execute, "mine")
    (root / first.plan_id).chmod(0o755)  # readable by others is not a problem; writable is
    for path in (root / first.plan_id).iterdir():
        path.chmod(0o644)
    again = anyio.run(planner.execute_with_resume, "mine")
    assert again.status == "completed" and again.nodes_run == 0
