"""Concurrency: processes racing for one plan, and many plans sharing one manager in one loop.

Racing processes are forked together from the fork server and released at the same instant
(a wall-clock barrier). Exactly one of them runs the plan; the others get `PlanLockedError`
naming the holder. The checkpoint chain never forks: sequence numbers are unique and
increasing, and each run writes one contiguous range of them. With SIGKILLs thrown in, the
next race takes over, and no node recorded as completed is run again by anyone.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, allow_bodies, random_dag
from tests.torture.support import (
    ForkServer,
    Tally,
    chain_of,
    crash_plan_id,
    log_lines,
    recorded_completed,
)
from vibe_planner import (
    FileCheckpointStore,
    MetaPlanner,
    NodeContext,
    PlanLockedError,
    Vibe,
    WorkflowPersistenceManager,
)

SIZE = 300
CRASH_WORKER = Path(__file__).resolve().parent.parent / "crash_worker.py"


def race(
    server: ForkServer,
    folder: Path,
    processes: int,
    *,
    seed: int,
    delay: float,
    kill_after: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fork *processes* racers on one plan, released together; return (reports, results)."""
    go_at = time.time() + 0.25 + 0.02 * processes  # after every child has been forked
    # The winner's nodes wait until the others were locked out (however late a racer starts
    # on a loaded machine): each race then has one outcome, not one that depends on timing.
    locked_out = folder / f"locked-out-{go_at!r}"
    locked_out.mkdir()
    args = [
        str(folder / "cp"),
        str(folder / "effects.log"),
        str(SIZE),
        str(seed),
        str(delay),
        repr(go_at),
        str(locked_out),
        str(processes - 1),
    ]
    jobs = [
        {"module": "tests.torture.race_worker", "argv": args, "out": str(folder / f"racer-{i}.out")}
        for i in range(processes)
    ]
    results = server.run(
        jobs,
        kill_after=None if kill_after is None else kill_after + go_at - time.time(),
        timeout=120,
    )
    reports = []
    for index, result in enumerate(results):
        text = (folder / f"racer-{index}.out").read_text()
        assert not result["timed_out"], text[-3000:]
        if result["returncode"] == 0:
            reports.append(json.loads(text.splitlines()[-1]))
        else:
            assert result["killed"], f"racer failed ({result['returncode']}): {text[-3000:]}"
    return reports, results


def clean_digest(server: ForkServer, folder: Path, seed: int) -> str:
    args = [str(folder / "clean-cp"), str(folder / "clean.log"), str(SIZE), str(seed), "0"]
    job = {"module": "tests.crash_worker", "argv": args, "out": str(folder / "clean.out")}
    (result,) = server.run([job], kill_after=None)
    assert result["returncode"] == 0, (folder / "clean.out").read_text()
    return (folder / "clean.out").read_text().splitlines()[-1]


@pytest.mark.parametrize("processes", [2, 8])
def test_racing_processes_exactly_one_runs(
    tmp_path: Path, fork_server: ForkServer, processes: int, long_mode: bool, tally: Tally
) -> None:
    rounds = 12 if long_mode else 3
    for round_ in range(rounds):
        seed = 500 + 10 * processes + round_
        folder = tmp_path / f"round-{round_}"
        folder.mkdir()
        reports, _ = race(fork_server, folder, processes, seed=seed, delay=0.01)
        outcomes = Counter(r["outcome"] for r in reports)
        assert outcomes == {"ran": 1, "locked": processes - 1}, reports
        (winner,) = [r for r in reports if r["outcome"] == "ran"]
        assert winner["status"] == "completed" and winner["nodes_run"] == SIZE
        for loser in (r for r in reports if r["outcome"] == "locked"):
            assert crash_plan_id(SIZE, seed) in loser["message"]
            # The holder's pid is in the lock file once the winner wrote it.
            assert loser["holder"] is None or f"pid={winner['pid']}" in loser["holder"], loser
            tally.add(
                "concurrency: racers locked out naming the holder", loser["holder"] is not None
            )
        runs = Counter(line.split()[0] for line in log_lines(folder / "effects.log"))
        assert runs == Counter({f"n{i:05d}": 1 for i in range(SIZE)}), "a node ran twice"
        assert {line.split()[1] for line in log_lines(folder / "effects.log")} == {
            str(winner["pid"])
        }
        links = chain_of(folder / "cp" / crash_plan_id(SIZE, seed))
        assert {link.run_id for link in links} == {winner["run_id"]}
        assert winner["digest"] == clean_digest(fork_server, folder, seed)
        tally.add("concurrency: processes raced", processes)
        tally.add("concurrency: races", 1)


def test_racing_processes_killed_at_random_moments_never_fork_the_chain(
    tmp_path: Path, fork_server: ForkServer, long_mode: bool, tally: Tally
) -> None:
    """Rounds of 8 racers, all SIGKILLed at a random moment, until a round completes the plan."""
    rng = random.Random(77)
    seed, processes = 901, 8
    plan_id = crash_plan_id(SIZE, seed)
    plan_folder = tmp_path / "cp" / plan_id
    digest = clean_digest(fork_server, tmp_path, seed)
    kills = rounds = 0
    target = 40 if long_mode else 6
    while True:
        recorded = recorded_completed(tmp_path / "cp", plan_id)
        offset = (
            (tmp_path / "effects.log").stat().st_size if (tmp_path / "effects.log").exists() else 0
        )
        last = rounds >= target
        reports, results = race(
            fork_server,
            tmp_path,
            processes,
            seed=seed,
            delay=0.004,
            kill_after=None if last else rng.uniform(0, 0.5),
        )
        rounds += 1
        killed = sum(r["killed"] for r in results)
        kills += killed
        tally.add("concurrency: processes raced", processes)
        tally.add("concurrency: racers SIGKILLed", killed)
        lines = log_lines(tmp_path / "effects.log", offset)
        again = {line.split()[0] for line in lines} & recorded
        assert not again, f"recorded nodes ran again: {sorted(again)[:10]}"
        # Within one round, only one process ever ran nodes.
        assert len({line.split()[1] for line in lines}) <= 1, "two racers ran nodes of one plan"
        assert recorded <= recorded_completed(tmp_path / "cp", plan_id)
        if plan_folder.exists():
            chain_of(plan_folder)
        assert Counter(r["outcome"] for r in reports)["ran"] <= 1
        for report in reports:
            if report["outcome"] != "locked":
                assert report["status"] == "completed" and report["digest"] == digest
        if last:
            assert any(r["outcome"] != "locked" for r in reports)
            break
    assert chain_of(plan_folder)[-1].completed == SIZE
    assert kills >= processes, "at least one round was killed"


def test_two_managers_of_one_process_race_for_one_plan(tmp_path: Path) -> None:
    """Two managers (two lock file descriptors) in one process: the flock still excludes."""
    started = anyio.Event()
    release = anyio.Event()

    async def slow(ctx: NodeContext) -> str:
        started.set()
        await release.wait()
        return ctx.node.id

    def planner() -> MetaPlanner:
        return MetaPlanner(
            planner=StaticPlanner(random_dag(3, 1, kind="slow")),
            handlers={"slow": slow},
            persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
        )

    async def main() -> None:
        first, second = planner(), planner()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.execute_with_resume, "two managers")
            await started.wait()
            with pytest.raises(PlanLockedError) as info:
                await second.execute_with_resume("two managers")
            assert "pid=" in str(info.value)
            with pytest.raises(PlanLockedError):
                await second.persistence_manager.delete_plan(
                    Vibe(description="two managers").default_plan_id()
                )
            release.set()
        again = await second.execute_with_resume("two managers")
        assert again.nodes_run == 0

    anyio.run(main)


# -- many plans, one manager, one event loop ------------------------------------------------------


class Recorder:
    def __init__(self, seed: int) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.rng = random.Random(seed)

    async def work(self, ctx: NodeContext) -> str:
        self.calls[(ctx.plan_id, ctx.node.id)] += 1
        await anyio.sleep(self.rng.choice([0, 0, 0.001, 0.003]))
        payload = [ctx.plan_id, ctx.node.id, ctx.inputs]
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_many_plans_share_one_manager_in_one_loop(
    tmp_path: Path, backend: str, tally: Tally
) -> None:
    plans = 24
    nodes = {i: random_dag(20 + i, 100 + i) for i in range(plans)}
    recorder = Recorder(1)
    manager = WorkflowPersistenceManager(tmp_path / "cp")

    class PerVibe:
        async def plan(self, vibe: Vibe) -> Any:
            index = int(vibe.description.split()[-1])
            return await StaticPlanner(nodes[index]).plan(vibe)

    planner = MetaPlanner(
        planner=PerVibe(),
        handlers={"work": recorder.work},
        persistence_manager=manager,
        checkpoint_interval=3,
        max_concurrency=4,
    )
    vibes = [Vibe(description=f"shared manager plan {i}") for i in range(plans)]
    results: dict[int, Any] = {}
    reader_errors: list[BaseException] = []

    async def run(index: int) -> None:
        results[index] = await planner.execute_with_resume(vibes[index])

    async def read(done: anyio.Event) -> None:
        while not done.is_set():
            try:
                await manager.list_checkpoints()
                for vibe in vibes[:4]:
                    await manager.latest(vibe.default_plan_id())
            except Exception as exc:  # collected: readers must never fail
                reader_errors.append(exc)
            await anyio.sleep(0.002)

    async def main() -> None:
        done = anyio.Event()
        async with anyio.create_task_group() as readers:
            readers.start_soon(read, done)
            async with anyio.create_task_group() as tg:
                for index in range(plans):
                    tg.start_soon(run, index)
            done.set()
        # A second pass finds every plan finished.
        for index in range(plans):
            again = await planner.execute_with_resume(vibes[index])
            assert again.nodes_run == 0 and again.outputs == results[index].outputs
        assert await manager.verify() == []

    anyio.run(main, backend=backend)
    assert not reader_errors, reader_errors[:3]
    for index, vibe in enumerate(vibes):
        plan_id = vibe.default_plan_id()
        result = results[index]
        assert result.status == "completed" and result.plan_id == plan_id
        assert {n for p, n in recorder.calls if p == plan_id} == {n.id for n in nodes[index]}
        links = chain_of(tmp_path / "cp" / plan_id)
        assert [link.sequence for link in links] == list(range(1, len(links) + 1))
        assert {link.run_id for link in links} == {result.run_id}
        for path in (tmp_path / "cp" / plan_id).glob("cp-*.json"):
            assert orjson.loads(path.read_bytes())["plan_id"] == plan_id
    assert all(count == 1 for count in recorder.calls.values()), "a node ran twice"
    tally.add("concurrency: plans sharing one manager", plans)


def test_readers_never_fail_while_a_writer_prunes(tmp_path: Path) -> None:
    """`list_checkpoints`, `verify` and `latest` while a run with ``keep_last`` deletes old
    snapshots: a file that vanishes between listing and reading is not an error of the reader.

    (A real race, so it hits the window a few times in a thousand reads; the test below
    forces the same interleaving every time.)
    """

    async def work(ctx: NodeContext) -> int:
        await anyio.sleep(0.001)
        return 1

    writer = WorkflowPersistenceManager(tmp_path / "cp", keep_last=1)
    other = WorkflowPersistenceManager(tmp_path / "cp")
    planner = MetaPlanner(
        planner=StaticPlanner(random_dag(300, 3, max_deps=1)),
        handlers={"work": work},
        persistence_manager=writer,
        checkpoint_interval=1,
        max_concurrency=2,
    )
    vibe = Vibe(description="pruning under readers")
    errors: list[str] = []
    calls = Counter[str]()

    async def read(name: str, manager: WorkflowPersistenceManager, done: anyio.Event) -> None:
        while not done.is_set():
            try:
                if name == "list":
                    await manager.list_checkpoints()
                elif name == "verify":
                    problems = await manager.verify()
                    assert not [p for p in problems if not p.path.name.startswith("journal-")]
                else:
                    await manager.latest(vibe.default_plan_id())
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
            calls[name] += 1

    async def main() -> None:
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            for index in range(3):
                for name in ("list", "verify", "latest"):
                    tg.start_soon(read, name, other if index % 2 else writer, done)
            result = await planner.execute_with_resume(vibe)
            done.set()
        assert result.status == "completed"

    anyio.run(main)
    assert min(calls.values()) > 20, calls
    assert not errors, (
        f"{len(errors)} reader failures in {sum(calls.values())} reads, e.g. {errors[:3]}"
    )


class PrunedRightAfterListing(FileCheckpointStore):
    """Forces the interleaving of a reader with a writer that has ``keep_last=1``: right after
    the reader lists a plan's checkpoints, the writer adds a newer one and deletes the rest."""

    def __init__(self, root: Path, newer: Path | None) -> None:
        super().__init__(root)
        self.newer = newer

    def list_checkpoints(self, plan_id: str) -> list[str]:
        listed = super().list_checkpoints(plan_id)
        if self.newer is not None:
            shutil.copy2(self.newer, self.location(plan_id, self.newer.name))
            self.newer = None
            for checkpoint_id in listed:
                os.unlink(self.location(plan_id, checkpoint_id + ".json"))
        return listed


@pytest.mark.parametrize("operation", ["list_checkpoints", "verify", "latest"])
def test_a_checkpoint_pruned_between_listing_and_reading_is_not_an_error(
    tmp_path: Path, operation: str
) -> None:
    async def work(ctx: NodeContext) -> int:
        await anyio.sleep(0.002)
        return 1

    planner = MetaPlanner(
        planner=StaticPlanner(random_dag(12, 3)),
        handlers={"work": work},
        # Every snapshot a base: the simulated writer below deletes all but the newest, which
        # is what keep_last=1 does to bases (a delta's chain it keeps; tests/test_chains.py).
        persistence_manager=WorkflowPersistenceManager(tmp_path / "run", base_ratio=0),
        checkpoint_interval=4,
        max_concurrency=1,
    )
    result = anyio.run(planner.execute, "pruned while read")
    folder = tmp_path / "run" / result.plan_id
    *older, newest = sorted(folder.glob("cp-*.json"))
    (tmp_path / "cp" / result.plan_id).mkdir(parents=True)
    for path in older:
        shutil.copy2(path, tmp_path / "cp" / result.plan_id / path.name)
    manager = WorkflowPersistenceManager(store=PrunedRightAfterListing(tmp_path / "cp", newest))

    async def read() -> Any:
        if operation == "latest":
            return await manager.latest(result.plan_id)
        if operation == "verify":
            return await manager.verify(result.plan_id)
        return await manager.list_checkpoints(result.plan_id)

    outcome = anyio.run(read)  # raises CheckpointNotFoundError on the current code
    if operation == "latest":
        assert outcome is not None and outcome.checkpoint_id == newest.stem
    elif operation == "verify":
        assert outcome == []
    else:
        assert all(info.error is None for info in outcome)


def test_sigkill_leaves_no_lock_behind_for_racers(
    tmp_path: Path, fork_server: ForkServer, tally: Tally
) -> None:
    """A holder killed mid-run: the next racers find the lock free; exactly one resumes."""
    seed = 902
    plan_id = crash_plan_id(SIZE, seed)
    # The holder: a real process that may run only 40 node bodies, killed once the files show
    # recorded progress (so it dies mid-run, holding the lock, whatever the machine's load).
    allow = tmp_path / "allow"
    allow_bodies(allow, 40)
    args = [str(tmp_path / "cp"), str(tmp_path / "effects.log"), str(SIZE), str(seed), "0.01", "5",
            "journal", str(allow)]
    with subprocess.Popen([sys.executable, str(CRASH_WORKER), *args], stdout=subprocess.DEVNULL) as holder:
        deadline = time.monotonic() + 120
        while len(recorded_completed(tmp_path / "cp", plan_id)) < 10:
            assert holder.poll() is None, "the holder ended before it was killed"
            assert time.monotonic() < deadline, "the holder recorded nothing in 120 s"
            time.sleep(0.002)
        holder.send_signal(signal.SIGKILL)
    assert holder.returncode == -signal.SIGKILL
    recorded = recorded_completed(tmp_path / "cp", plan_id)
    assert len(recorded) >= 10
    offset = (tmp_path / "effects.log").stat().st_size
    reports, _ = race(fork_server, tmp_path, 8, seed=seed, delay=0.01)
    assert Counter(r["outcome"] for r in reports) == {"ran": 1, "locked": 7}
    assert not {line.split()[0] for line in log_lines(tmp_path / "effects.log", offset)} & recorded
    tally.add("concurrency: processes raced", 9)
    tally.add("concurrency: racers SIGKILLed", 1)
