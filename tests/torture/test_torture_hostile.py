"""Hostile input, end to end: ids that try to escape, planted symlinks and special files,
huge plans, deep or unencodable JSON, outputs that are not JSON, file modes.

`tests/test_ids.py` covers the id validators; here every public entry point is called with
the hostile value and the whole temporary folder is compared before and after: nothing
outside the checkpoint folder is touched, and for a rejected id nothing at all.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, allow_bodies, node, random_dag
from tests.torture.support import (
    CRASH_WORKER,
    FailingStore,
    crash_plan_id,
    enospc_write_error,
    tree,
    tree_diff,
)
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointWriteError,
    InvalidIdentifierError,
    MetaPlanner,
    NodeContext,
    NodeOutputError,
    PlanValidationError,
    RetryPolicy,
    Vibe,
    VibePlannerError,
    WorkflowNode,
    WorkflowPersistenceManager,
)

HOSTILE_PLAN_IDS = [
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param("../escape", id="parent"),
    pytest.param("a/../../b", id="traversal"),
    pytest.param("/etc", id="absolute"),
    pytest.param("a\\..\\b", id="backslash"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("\x00", id="only-nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("", id="empty"),
    pytest.param(" ", id="space"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("-rf", id="leading-dash"),
    pytest.param("~root", id="tilde"),
    pytest.param("$HOME", id="dollar"),
    pytest.param("%2e%2e%2f", id="percent-encoded"),
    pytest.param("caf\u00e9", id="accent"),
    pytest.param("\uff0e\uff0e", id="fullwidth-dots"),
    pytest.param("a\u2215b", id="division-slash"),
    pytest.param("a\u202eb", id="rtl-override"),
    pytest.param("\u2024\u2024", id="one-dot-leaders"),
    pytest.param("a\u200bb", id="zero-width-space"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("x" * 10_000, id="10k-chars"),
    pytest.param(("../" * 3000)[:10_000], id="10k-traversal"),
    pytest.param(5, id="int"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(Path("p"), id="path"),
]

HOSTILE_CHECKPOINT_IDS = [
    pytest.param("../cp-00000001-0123456789ab", id="parent"),
    pytest.param("cp-00000001-0123456789ab/../../x", id="traversal"),
    pytest.param("cp-00000001-0123456789ab.json", id="with-suffix"),
    pytest.param("cp-00000001-0123456789AB", id="uppercase-hex"),
    pytest.param("cp-1-0123456789ab", id="short-sequence"),
    pytest.param("cp-00000001-0123456789ab\x00", id="nul"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("cp-00000001-0123456789a\u0431", id="cyrillic"),
    pytest.param("c" * 10_000, id="10k-chars"),
    pytest.param("", id="empty"),
]


async def work(ctx: NodeContext) -> dict[str, Any]:
    return {"id": ctx.node.id, "inputs": sorted(ctx.inputs)}


def planner_for(root: Path, nodes: list[WorkflowNode] | None = None, **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(
        planner=StaticPlanner(nodes or random_dag(6, 1)),
        handlers={"work": work},
        persistence_manager=WorkflowPersistenceManager(root),
        **kwargs,
    )


@pytest.fixture
def finished(tmp_path: Path) -> tuple[MetaPlanner, Any]:
    """A planner on ``tmp_path/cp`` with one finished run (something to point at)."""
    planner = planner_for(tmp_path / "cp")
    return planner, anyio.run(planner.execute, "a finished plan")


def entry_points_for_plan_id(
    planner: MetaPlanner, result: Any, bad: Any
) -> dict[str, Callable[[], Awaitable[Any]]]:
    manager = planner.persistence_manager
    vibe = "a finished plan"
    return {
        "execute_with_resume": lambda: planner.execute_with_resume(vibe, plan_id=bad),
        "execute": lambda: planner.execute(vibe, plan_id=bad),
        "resume": lambda: planner.resume(bad),
        "plan": lambda: planner.plan(vibe, plan_id=bad),
        "create_checkpoint": lambda: planner.create_checkpoint(bad, result),
        "list_checkpoints": lambda: planner.list_checkpoints(bad),
        "latest": lambda: manager.latest(bad),
        "restore": lambda: manager.restore(bad),
        "verify": lambda: manager.verify(bad),
        "prune": lambda: manager.prune(bad, 1),
        "delete_plan": lambda: manager.delete_plan(bad),
        "acquire": lambda: manager.acquire(bad),
    }


@pytest.mark.parametrize("bad", HOSTILE_PLAN_IDS)
def test_hostile_plan_ids_are_refused_before_any_file_is_touched(
    tmp_path: Path, finished: tuple[MetaPlanner, Any], bad: Any
) -> None:
    planner, result = finished
    before = tree(tmp_path)

    async def call_all() -> None:
        for name, call in entry_points_for_plan_id(planner, result, bad).items():
            with pytest.raises(InvalidIdentifierError) as info:
                await call()
            assert isinstance(info.value, ValueError), name
            assert info.value.kind == "plan_id" and info.value.reason, name
            assert len(str(info.value)) < 400, f"{name}: the message must stay readable"

    anyio.run(call_all)
    assert tree(tmp_path) == before, tree_diff(before, tree(tmp_path))


@pytest.mark.parametrize("bad", HOSTILE_CHECKPOINT_IDS)
def test_hostile_checkpoint_ids_are_refused_before_any_file_is_touched(
    tmp_path: Path, finished: tuple[MetaPlanner, Any], bad: str
) -> None:
    planner, result = finished
    manager = planner.persistence_manager
    before = tree(tmp_path)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "get_checkpoint": lambda: manager.get_checkpoint(bad),
        "delete_checkpoint": lambda: manager.delete_checkpoint(bad),
        "restore": lambda: manager.restore(result.plan_id, bad),
        "planner.get_checkpoint": lambda: planner.get_checkpoint(bad),
        "planner.delete_checkpoint": lambda: planner.delete_checkpoint(bad),
        "execute_with_resume": lambda: planner.execute_with_resume(
            "a finished plan", checkpoint_id=bad
        ),
        "resume": lambda: planner.resume(result.plan_id, checkpoint_id=bad),
    }

    async def call_all() -> None:
        for name, call in calls.items():
            with pytest.raises(InvalidIdentifierError) as info:
                await call()
            assert info.value.kind == "checkpoint_id", name

    anyio.run(call_all)
    assert tree(tmp_path) == before, tree_diff(before, tree(tmp_path))


@pytest.mark.parametrize(
    "odd", ["A" * 128, "a.b-c_d", "CON", "nul", "0", "a..b".replace("..", ".-.")]
)
def test_odd_but_valid_plan_ids_stay_inside_their_folder(tmp_path: Path, odd: str) -> None:
    (tmp_path / "outside").mkdir()
    before = tree(tmp_path / "outside")
    planner = planner_for(tmp_path / "cp")
    result = anyio.run(lambda: planner.execute_with_resume("odd ids", plan_id=odd))
    assert result.status == "completed"
    assert sorted(os.listdir(tmp_path)) == ["cp", "outside"]
    assert os.listdir(tmp_path / "cp") == [odd]
    assert tree(tmp_path / "outside") == before


@pytest.mark.parametrize(
    "description",
    [
        pytest.param("../../../../etc/passwd", id="traversal"),
        pytest.param("/tmp/evil\x00\n\r", id="nul-newline"),
        pytest.param("\u202egnp.exe", id="rtl-override"),
        pytest.param("\U0001f600" * 2_500, id="10k-emoji"),
        pytest.param("x" * 100_000, id="100k-chars"),
    ],
)
def test_hostile_vibes_derive_safe_plan_ids(tmp_path: Path, description: str) -> None:
    planner = planner_for(tmp_path / "cp")
    vibe = Vibe(
        description=description,
        style=description[:10_000],
        constraints=[description[:1000]] * 3,
        metadata={"path": "../../x", "n": [1, {"a": "\x00"}]},
    )
    result = anyio.run(planner.execute_with_resume, vibe)
    assert result.status == "completed"
    assert os.listdir(tmp_path) == ["cp"]
    assert os.listdir(tmp_path / "cp") == [vibe.default_plan_id()]
    again = anyio.run(planner.execute_with_resume, vibe)
    assert again.nodes_run == 0
    stored = anyio.run(planner.persistence_manager.latest, vibe.default_plan_id())
    assert stored is not None and stored.vibe == vibe


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\x00", "", "x" * 129, "a b", "\u00e9"])
def test_hostile_node_ids_are_a_plan_validation_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="id"):
        WorkflowNode(id=bad, kind="work")


# -- planted symlinks and special files -----------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Any]:
    """A finished plan next to an ``outside`` folder holding a victim file and a valid copy
    of the plan's newest checkpoint (what an attacker would like the library to load)."""
    planner = planner_for(tmp_path / "cp")
    result = anyio.run(planner.execute, "planted")
    folder = tmp_path / "cp" / result.plan_id
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious\n")
    (outside / "victim.txt").chmod(0o644)
    newest = sorted(folder.glob("cp-*.json"))[-1]
    shutil.copy2(newest, outside / newest.name)
    return {
        "planner": planner,
        "result": result,
        "folder": folder,
        "outside": outside,
        "newest": newest,
    }


def plant(kind: str, planted: dict[str, Any]) -> Path:
    """Replace a file of the plan by a symlink pointing outside; return the link."""
    folder, outside, newest = planted["folder"], planted["outside"], planted["newest"]
    if kind == "plan-folder":
        shutil.move(folder, outside / "plan")
        folder.symlink_to(outside / "plan", target_is_directory=True)
        return folder
    if kind == "newest-checkpoint":
        newest.unlink()
        newest.symlink_to(outside / newest.name)
        return newest
    if kind == "newer-checkpoint":
        link = folder / "cp-00000099-0123456789ab.json"
        link.symlink_to(outside / "victim.txt")
        return link
    if kind == "journal":
        run_id = orjson.loads(newest.read_bytes())["run_id"]
        link = folder / f"journal-{run_id}.jsonl"
        if link.exists():
            link.unlink()
        link.symlink_to(outside / "victim.txt")
        return link
    if kind == "lock":
        (folder / ".lock").unlink()
        (folder / ".lock").symlink_to(outside / "victim.txt")
        return folder / ".lock"
    if kind == "stale-temp":
        link = folder / ".cp-00000099-0123456789ab.json.tmp-deadbeef"
        link.symlink_to(outside / "victim.txt")
        return link
    raise AssertionError(kind)


SYMLINKS = ["plan-folder", "newest-checkpoint", "newer-checkpoint", "journal", "lock", "stale-temp"]


@pytest.mark.parametrize("kind", SYMLINKS)
def test_planted_symlinks_are_never_followed(
    tmp_path: Path, planted: dict[str, Any], kind: str
) -> None:
    planner, result, outside = planted["planner"], planted["result"], planted["outside"]
    manager = planner.persistence_manager
    link = plant(kind, planted)
    outside_before = tree(outside)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "latest": lambda: manager.latest(result.plan_id),
        "restore": lambda: manager.restore(result.plan_id),
        "list": lambda: manager.list_checkpoints(result.plan_id),
        "list-all": lambda: manager.list_checkpoints(),
        "verify": lambda: manager.verify(result.plan_id),
        "verify-all": lambda: manager.verify(),
        "get": lambda: manager.get_checkpoint(planted["newest"].stem),
        "execute_with_resume": lambda: planner.execute_with_resume("planted"),
        "execute": lambda: planner.execute("planted"),
        "prune": lambda: manager.prune(result.plan_id, 1),
        "delete_plan": lambda: manager.delete_plan(result.plan_id),
    }
    outcomes: dict[str, str] = {}

    async def call_all() -> None:
        for name, call in calls.items():
            try:
                value = await call()
            except (CheckpointCorruptError, CheckpointWriteError) as exc:
                outcomes[name] = f"{type(exc).__name__}: {exc.reason or 'NO REASON'}"
            except VibePlannerError as exc:
                outcomes[name] = f"{type(exc).__name__}: {exc}"
            else:
                outcomes[name] = "ok"
                if name == "latest" and value is not None:
                    # Whatever it returns was read from the checkpoint folder, not through the link.
                    assert value.checkpoint_id != "cp-00000099-0123456789ab"
            assert tree(outside) == outside_before, f"{name} touched the outside folder"

    anyio.run(call_all)
    # The attacker's checkpoint was never loaded as the plan's state.
    if kind in ("newest-checkpoint", "newer-checkpoint"):
        assert outcomes["latest"].startswith("CheckpointCorruptError"), outcomes
        assert "symlink" in outcomes["latest"], outcomes
    if kind in ("plan-folder", "lock"):
        assert outcomes["execute_with_resume"].startswith("CheckpointWriteError"), outcomes
        assert outcomes["delete_plan"].startswith("CheckpointWriteError"), outcomes
    if kind == "journal":
        assert "symlink" in outcomes["execute_with_resume"], outcomes
    assert (outside / "victim.txt").read_bytes() == b"precious\n"
    # The link itself may be gone (prune, delete_plan and stale-temp cleanup unlink it), but
    # never replaced by a regular file written through it.
    assert not link.exists() or link.is_symlink() or link.is_dir()


SPECIAL_FILE_PROBE = """
import os, sys, anyio
from vibe_planner import CheckpointCorruptError, WorkflowPersistenceManager
manager = WorkflowPersistenceManager(sys.argv[1])
plan_id, checkpoint_id = sys.argv[2], sys.argv[3]
calls = {
    "latest": lambda: manager.latest(plan_id),
    "get_checkpoint": lambda: manager.get_checkpoint(checkpoint_id),
    "list_checkpoints": lambda: manager.list_checkpoints(plan_id),
    "verify": lambda: manager.verify(plan_id),
}
for name, call in calls.items():
    print("calling", name, flush=True)
    try:
        anyio.run(call)
    except CheckpointCorruptError as exc:
        print(name, "CheckpointCorruptError", exc.reason, flush=True)
    else:
        print(name, "returned", flush=True)
"""


@pytest.mark.parametrize("kind", ["fifo-as-newest-checkpoint", "fifo-as-journal"])
def test_special_files_planted_in_the_folder_do_not_hang_readers(
    tmp_path: Path, planted: dict[str, Any], kind: str
) -> None:
    """A named pipe where a checkpoint or journal should be: opening it for reading blocks
    forever (in a worker thread no cancel scope can stop) unless the library refuses it."""
    folder, newest = planted["folder"], planted["newest"]
    if kind == "fifo-as-newest-checkpoint":
        fifo = folder / "cp-00000099-0123456789ab.json"
    else:
        fifo = folder / f"journal-{orjson.loads(newest.read_bytes())['run_id']}.jsonl"
        fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)
    args = [
        sys.executable,
        "-c",
        SPECIAL_FILE_PROBE,
        str(tmp_path / "cp"),
        planted["result"].plan_id,
        fifo.stem if kind.endswith("checkpoint") else newest.stem,
    ]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            output, _ = proc.communicate()
            stuck = output.decode().splitlines()[-1]
            pytest.fail(f"reading a folder with a FIFO in it hung ({stuck!r})")
    text = output.decode()
    assert proc.returncode == 0, text
    if kind == "fifo-as-newest-checkpoint":
        assert "latest CheckpointCorruptError not a regular file" in text, text


# -- size and shape --------------------------------------------------------------------------------


def test_a_100k_node_plan_is_refused_quickly_with_a_clear_error(tmp_path: Path) -> None:
    nodes = [WorkflowNode(id=f"n{i}", kind="work") for i in range(100_000)]
    planner = planner_for(tmp_path / "cp", nodes)
    started = time.monotonic()
    with pytest.raises(PlanValidationError) as info:
        anyio.run(planner.execute_with_resume, "a hundred thousand nodes")
    assert "100000 nodes" in str(info.value) and "20000" in str(info.value)
    assert time.monotonic() - started < 30
    assert not list((tmp_path / "cp").rglob("cp-*.json")), "nothing is checkpointed"


def test_the_largest_allowed_plan_checkpoints_and_resumes(tmp_path: Path) -> None:
    """20,000 nodes (the limit), a wide and deep DAG, checkpointed and resumed."""
    nodes = random_dag(20_000, 12, max_deps=3)
    planner = planner_for(tmp_path / "cp", nodes, checkpoint_interval=None, max_concurrency=64)
    first = anyio.run(planner.execute_with_resume, "twenty thousand nodes")
    assert first.status == "completed" and first.nodes_run == 20_000
    again = anyio.run(planner.execute_with_resume, "twenty thousand nodes")
    assert again.nodes_run == 0 and again.outputs == first.outputs
    assert anyio.run(planner.persistence_manager.verify) == []


def nest(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


class Outcome:
    """Runs scenarios; each ends in a clear error up front, or in checkpoints that load back."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(
        self, make: Callable[[], tuple[MetaPlanner, Vibe, dict[str, Any]]], label: str
    ) -> None:
        try:
            planner, vibe, kwargs = make()
        except (VibePlannerError, ValueError):  # refused at construction: clear enough
            return
        try:
            result = anyio.run(lambda: planner.execute_with_resume(vibe, **kwargs))
        except VibePlannerError:
            return
        except Exception as exc:
            self.problems.append(f"{label}: the run failed with a bare {type(exc).__name__}: {exc}")
            return
        try:
            stored = anyio.run(planner.persistence_manager.latest, result.plan_id)
            again = anyio.run(lambda: planner.execute_with_resume(vibe, **kwargs))
        except Exception as exc:
            self.problems.append(
                f"{label}: the run ended {result.status!r} but wrote a checkpoint that cannot be "
                f"read back: {type(exc).__name__}: {exc}"
            )
            return
        assert stored is not None, label
        if result.status == "completed":
            assert again.nodes_run == 0, label


@pytest.mark.parametrize(
    "where", ["node-parameters", "node-output", "vibe-metadata", "run-metadata"]
)
def test_deeply_nested_json_is_refused_clearly_or_round_trips(tmp_path: Path, where: str) -> None:
    """Nesting depths around the JSON encoder's limit (~255): every depth either gets a clear
    error up front or makes checkpoints that load back. Never a bare TypeError, never a
    checkpoint written that the library cannot read."""
    outcome = Outcome()
    for depth in [10, 100, *range(240, 262), 1000, 100_000]:

        def make(depth: int = depth) -> tuple[MetaPlanner, Vibe, dict[str, Any]]:
            vibe = Vibe(
                description=f"nested {where} {depth}",
                metadata={"deep": nest(depth)} if where == "vibe-metadata" else {},
            )
            params = {"deep": nest(depth)} if where == "node-parameters" else {}

            async def handler(ctx: NodeContext) -> Any:
                return nest(depth) if where == "node-output" else 1

            planner = MetaPlanner(
                planner=StaticPlanner([WorkflowNode(id="a", kind="h", parameters=params)]),
                handlers={"h": handler},
                retry=RetryPolicy(max_attempts=1),
                persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
            )
            kwargs = {"metadata": {"deep": nest(depth)}} if where == "run-metadata" else {}
            return planner, vibe, kwargs

        outcome.check(make, f"depth {depth}")
    assert not outcome.problems, "\n".join(outcome.problems)


@pytest.mark.parametrize("where", ["node-parameters", "vibe-metadata", "run-metadata"])
def test_unencodable_strings_are_refused_clearly(tmp_path: Path, where: str) -> None:
    """A lone surrogate is a Python str but not UTF-8: JSON cannot store it."""
    lone = "\ud800"

    def make() -> tuple[MetaPlanner, Vibe, dict[str, Any]]:
        vibe = Vibe(
            description=f"surrogate in {where}",
            metadata={"s": lone} if where == "vibe-metadata" else {},
        )
        params = {"s": lone} if where == "node-parameters" else {}
        planner = MetaPlanner(
            planner=StaticPlanner([WorkflowNode(id="a", kind="work", parameters=params)]),
            handlers={"work": work},
            persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
        )
        return planner, vibe, {"metadata": {"s": lone}} if where == "run-metadata" else {}

    outcome = Outcome()
    outcome.check(make, where)
    assert not outcome.problems, "\n".join(outcome.problems)


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


NOT_JSON = [
    pytest.param(object(), id="object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(1j, id="complex"),
    pytest.param(decimal.Decimal("1.5"), id="decimal"),
    pytest.param(Path("/etc/passwd"), id="path"),
    pytest.param({1: "int key"}, id="int-key"),
    pytest.param(2**64, id="int-too-big"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param([1, [2, {"k": object()}]], id="nested-object"),
    # Not JSON values either, but the encoder turns them into strings, numbers or objects
    # silently (the output read back differs from what the node returned):
    pytest.param(uuid.UUID(int=1), id="uuid"),
    pytest.param(datetime.datetime(2024, 1, 1, 12, 0), id="datetime"),
    pytest.param(datetime.date(2024, 1, 1), id="date"),
    pytest.param(datetime.time(12, 0), id="time"),
    pytest.param(Point(1), id="dataclass"),
    pytest.param(Color.RED, id="enum"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="infinity"),
    pytest.param({"ok": [1, uuid.UUID(int=2)]}, id="nested-uuid"),
]


@pytest.mark.parametrize("value", NOT_JSON)
def test_outputs_that_are_not_json_fail_the_node_naming_it(tmp_path: Path, value: Any) -> None:
    """docs/checkpoints.md: "Outputs must be JSON values; anything else fails the node with a
    `NodeOutputError` naming it" - never a silent ``str()`` or other conversion."""

    async def returns(ctx: NodeContext) -> Any:
        return value if ctx.node.id == "bad-node" else "fine"

    planner = MetaPlanner(
        planner=StaticPlanner([node("fine", kind="r"), node("bad-node", "fine", kind="r")]),
        handlers={"r": returns},
        persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
    )
    result = anyio.run(planner.execute_with_resume, "not json")
    bad = result.node_results["bad-node"]
    assert bad.status == "failed", f"{value!r} was stored as {bad.output!r}"
    assert bad.error is not None and bad.error.type == NodeOutputError.__name__
    assert "'bad-node'" in bad.error.message and not bad.error.retryable
    assert bad.attempts == 1, "a non-JSON output is not retried"
    assert result.node_results["fine"].status == "completed"
    latest = anyio.run(planner.persistence_manager.latest, result.plan_id)
    assert latest is not None and latest.failed_nodes == ["bad-node"]


# -- file modes -----------------------------------------------------------------------------------


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """With umask 000, a crashed run's files (snapshots, journal, lock, temp files) and the
    folders created by the library are 0600 and 0700."""
    checkpoint_dir, log, allow = tmp_path / "cp", tmp_path / "effects.log", tmp_path / "allow"
    args = [str(checkpoint_dir), str(log), "300", "5", "0.004", "1000", "journal", str(allow)]
    command = ["sh", "-c", 'umask 000 && exec "$0" "$@"', sys.executable, str(CRASH_WORKER), *args]
    allow_bodies(allow, 150)  # still mid-run when killed, however late the kill lands
    with subprocess.Popen(command, stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while not log.exists() or len(log.read_bytes().splitlines()) < 100:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    folder = checkpoint_dir / crash_plan_id(300, 5)
    names = sorted(os.listdir(folder))
    assert any(n.startswith("journal-") for n in names) and ".lock" in names
    assert stat.S_IMODE(checkpoint_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in names:
        assert stat.S_IMODE((folder / name).lstat().st_mode) == 0o600, name

    # The same in-process, with a store whose disk fills up mid-run (files left as they are).
    old = os.umask(0)
    try:
        store = FailingStore(tmp_path / "cp2", 3, make_error=enospc_write_error)
        planner = MetaPlanner(
            planner=StaticPlanner(random_dag(20, 2)),
            handlers={"work": work},
            persistence_manager=WorkflowPersistenceManager(store=store),
        )
        with pytest.raises(CheckpointWriteError):
            anyio.run(planner.execute_with_resume, "umask")
    finally:
        os.umask(old)
    for path in (tmp_path / "cp2").rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
