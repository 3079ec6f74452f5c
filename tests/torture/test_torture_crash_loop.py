"""Crash loop: 300-node plans SIGKILLed at random moments, resumed, killed again, to the end.

Each plan runs `tests/crash_worker.py` (node bodies append their id to a side-effect log before
reporting completion). An attempt is killed at a moment drawn uniformly from the time the rest
of the run would take plus its startup, widened by 30%: so kills land during startup and
planning, among the node completions, while snapshots are written, and after the run finished
(some attempts are not killed at all). Most attempts are forked from a pre-imported server
(a real process, SIGKILLed like any other); every few attempts a fresh interpreter is started
instead, so that kills during import and startup happen too.

Checked after every attempt:
- the latest checkpoint loads through the library, and the library's view of what completed
  equals the one read independently from the files (`recorded_completed`);
- no node recorded as completed (by a snapshot or the journal) before the attempt ran again;
- what was recorded before is still recorded after (nothing lost).
And per plan at the end: the outputs equal those of a run that never crashed, the chain of
snapshots never forked, every file verifies, and one more call returns the stored result.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson
import pytest

from tests.torture.support import (
    ROOT,
    ForkServer,
    Tally,
    chain_of,
    crash_plan_id,
    log_lines,
    recorded_completed,
)
from vibe_planner import WorkflowPersistenceManager

SIZE = 300
CI_KILLS = 60
LONG_KILLS = 1000
SPAWN_EVERY = 9  # one attempt in this many starts a fresh interpreter


@dataclass(frozen=True)
class Setup:
    seed: int
    delay: float
    interval: int
    durability: str
    keep_last: int | None = None

    def args(self, checkpoint_dir: Path, log: Path) -> list[str]:
        args = [
            str(checkpoint_dir),
            str(log),
            str(SIZE),
            str(self.seed),
            str(self.delay),
            str(self.interval),
            self.durability,
        ]
        return args if self.keep_last is None else [*args, str(self.keep_last)]

    @property
    def module(self) -> str:
        """The worker: `tests/crash_worker.py`, or its pruning variant under ``keep_last``."""
        return "tests.crash_worker" if self.keep_last is None else "tests.torture.keep_worker"


def setups(seed: int) -> list[Setup]:
    """Plan settings for the plans of a loop: varied delays, intervals and durabilities."""
    rng = random.Random(seed)
    plans = []
    for index in range(1000):
        durability = "interval" if index % 4 == 3 else "journal"
        interval = (
            rng.choice([3, 5, 17]) if durability == "interval" else rng.choice([3, 5, 17, 1000])
        )
        plans.append(
            Setup(
                seed=seed * 1000 + index,
                delay=rng.choice([0.002, 0.004, 0.008]),
                interval=interval,
                durability=durability,
                keep_last=rng.choice([1, 2]) if index % 3 == 1 else None,
            )
        )
    return plans


def library_view(checkpoint_dir: Path, plan_id: str) -> set[str]:
    """What the library would resume from: it must load, and agree with the files."""

    async def load() -> set[str]:
        manager = WorkflowPersistenceManager(checkpoint_dir)
        latest = await manager.latest(plan_id)  # raises if the newest snapshot is damaged
        restored = await manager.restore(plan_id)
        if latest is None:
            assert restored is None
            return set()
        assert restored is not None and restored.checkpoint == latest
        return set(latest.completed_nodes) | {r["node_id"] for r in restored.journal_records}

    return anyio.run(load)


def final_checks(checkpoint_dir: Path, plan_id: str, keep_last: int | None = None) -> None:
    """Every snapshot verifies; journals may only have torn tails; the chain is linear."""

    async def check() -> None:
        manager = WorkflowPersistenceManager(checkpoint_dir)
        infos = await manager.list_checkpoints(plan_id)
        assert not [i.error for i in infos if i.error], "a snapshot is damaged"
        problems = await manager.verify(plan_id)
        assert all(p.path.name.startswith("journal-") for p in problems), problems

    anyio.run(check)
    links = chain_of(checkpoint_dir / plan_id)
    if keep_last is None:
        assert links[0].sequence == 1 and links[0].reason == "planned"
        assert [link.sequence for link in links] == list(range(1, len(links) + 1))
    else:
        # The newest keep_last and the checkpoints their chains need (from their bases) are
        # kept; a kill between a write and its pruning may leave one more.
        bases = {}
        for path in (checkpoint_dir / plan_id).glob("cp-*.json"):
            document = orjson.loads(path.read_bytes())
            bases[document["sequence"]] = int(document.get("base", document["checkpoint_id"])[3:11])
        needed_from = min(bases[link.sequence] for link in links[-keep_last:])
        extra = [link.sequence for link in links if link.sequence < needed_from]
        assert len(extra) <= 1, ([link.sequence for link in links], needed_from)
    # Usually "final"; an interval snapshot that caught the last completion before a kill
    # is as good (the next call returns the stored result without writing again).
    assert links[-1].completed == SIZE and links[-1].reason in ("final", "interval", "resumed")


class Loop:
    """Runs plans to completion under random SIGKILLs and keeps the counts."""

    def __init__(
        self, tmp_path: Path, server: ForkServer, rng: random.Random, tally: Tally
    ) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.rng = rng
        self.tally = tally
        self.attempts = 0
        self.spawn_overhead = 0.0

    def fork(
        self, setup: Setup, args: list[str], out: Path, kill_after: float | None
    ) -> tuple[int, float]:
        started = time.monotonic()
        job = {"module": setup.module, "argv": args, "out": str(out)}
        (result,) = self.server.run([job], kill_after=kill_after, timeout=120)
        assert not result["timed_out"], f"worker hung: {out.read_text()[-2000:]}"
        return result["returncode"], time.monotonic() - started

    def spawn(
        self, setup: Setup, args: list[str], out: Path, kill_after: float | None
    ) -> tuple[int, float]:
        started = time.monotonic()
        command = [sys.executable, "-m", setup.module, *args]
        with (
            out.open("wb") as sink,
            subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT) as proc,
        ):
            try:
                proc.wait(timeout=120 if kill_after is None else kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        return proc.returncode, time.monotonic() - started

    def measure_spawn_overhead(self, setup: Setup, clean_dir: Path) -> None:
        """Time a fresh interpreter that finds the clean plan finished: startup plus a load."""
        out = self.tmp_path / "spawn-probe.txt"
        code, elapsed = self.spawn(
            setup, setup.args(clean_dir, self.tmp_path / "probe.log"), out, None
        )
        assert code == 0, out.read_text()
        self.spawn_overhead = elapsed

    def kill_moment(
        self, clean_time: float, done_time: float, recorded: int, spawned: bool
    ) -> float:
        """When to SIGKILL an attempt, measured from its start.

        Most attempts are killed at a moment drawn from what the rest of this plan should
        take (startup included), so kills land during startup, planning, among the
        completions and while snapshots are written. One in six draws from a span half again
        as long, so some attempts run to the end and are killed on the way out, or finish.
        """
        startup = self.spawn_overhead if spawned else 0.0
        expected = startup + done_time + max(0.0, clean_time - done_time) * (1 - recorded / SIZE)
        stretch = 1.5 if self.rng.random() < 1 / 6 else 0.95
        return self.rng.uniform(0, stretch * expected)

    def run_plan(self, setup: Setup) -> int:
        """Crash-loop one plan to completion; return the number of kills it took."""
        folder = self.tmp_path / f"plan-{setup.seed}"
        folder.mkdir()
        checkpoint_dir, log, out = folder / "cp", folder / "effects.log", folder / "out.txt"
        plan_id = crash_plan_id(SIZE, setup.seed)

        clean_out = folder / "clean.txt"
        clean_args = setup.args(folder / "clean-cp", folder / "clean.log")
        code, clean_time = self.fork(setup, clean_args, clean_out, None)
        assert code == 0, clean_out.read_text()
        clean_digest = clean_out.read_text().splitlines()[-1]
        if not self.spawn_overhead:
            self.measure_spawn_overhead(setup, folder / "clean-cp")
        _, finished_time = self.fork(setup, clean_args, clean_out, None)

        kills = kills_when_done = 0
        done_time = finished_time
        while True:
            recorded = recorded_completed(checkpoint_dir, plan_id)
            assert library_view(checkpoint_dir, plan_id) == recorded
            offset = log.stat().st_size if log.exists() else 0
            self.attempts += 1
            spawned = self.attempts % SPAWN_EVERY == 0
            kill_after = self.kill_moment(clean_time, done_time, len(recorded), spawned)
            if len(recorded) == SIZE:
                # Kills after the last completion was recorded (before the final snapshot,
                # while it is written, on the way out): a few per plan, then let it finish.
                kills_when_done += 1
                if kills_when_done > 4:
                    kill_after = None
            run = self.spawn if spawned else self.fork
            code, elapsed = run(setup, setup.args(checkpoint_dir, log), out, kill_after)
            assert code in (0, -signal.SIGKILL), (
                f"worker failed ({code}): {out.read_text()[-3000:]}"
            )

            ran = log_lines(log, offset)
            again = set(ran) & recorded
            assert not again, f"nodes recorded as completed ran again: {sorted(again)[:10]}"
            after = recorded_completed(checkpoint_dir, plan_id)
            assert recorded <= after, (
                f"recorded completions were lost: {sorted(recorded - after)[:10]}"
            )
            self.tally.add("crash loop: protected node checks", len(recorded))
            if code == 0:
                break
            if len(recorded) == SIZE and not spawned:
                done_time = max(done_time, elapsed)
            kills += 1
            self.tally.add("crash loop: SIGKILLs survived")
            if spawned:
                self.tally.add("crash loop: SIGKILLs of a fresh interpreter")
            if setup.keep_last is not None:
                self.tally.add("crash loop: SIGKILLs of a pruning run (keep_last)")
            if len(recorded) == SIZE:
                self.tally.add("crash loop: kills after every node was recorded")
            elif not ran:
                self.tally.add("crash loop: kills before any node of the attempt ran")

        status, digest = out.read_text().splitlines()[-2:]
        assert digest == clean_digest, "outputs after crashes differ from a run that never crashed"
        assert status.startswith("completed ")
        final_checks(checkpoint_dir, plan_id, setup.keep_last)
        code, _ = self.fork(setup, setup.args(checkpoint_dir, log), out, None)
        assert code == 0 and out.read_text().splitlines() == [f"completed 0 {SIZE}", clean_digest]

        runs = Counter(log_lines(log))
        assert set(runs) == {f"n{i:05d}" for i in range(SIZE)}
        self.tally.add("crash loop: node re-runs of unrecorded work", sum(runs.values()) - SIZE)
        self.tally.add("crash loop: plans completed")
        return kills


def test_crash_loop_never_loses_or_repeats_recorded_work(
    tmp_path: Path, fork_server: ForkServer, long_mode: bool, tally: Tally
) -> None:
    target = LONG_KILLS if long_mode else CI_KILLS
    loop = Loop(tmp_path, fork_server, random.Random(20240601), tally)
    kills = 0
    per_plan = []
    for setup in setups(seed=11 if long_mode else 7):
        per_plan.append(loop.run_plan(setup))
        kills = sum(per_plan)
        # How many kills a plan takes depends on where the random kills land (the machine's
        # load included): keep going until both the kills and the plans are there.
        if kills >= target and len(per_plan) >= 3:
            break
    assert kills >= target
    assert len(per_plan) >= 3, "several plans, each with many kills"
    print(f"{kills} kills over {len(per_plan)} plans: {per_plan}")


@pytest.mark.parametrize("moment", ["startup", "after-completion"])
def test_kills_swept_over_the_edges_of_a_run(
    tmp_path: Path, fork_server: ForkServer, moment: str, tally: Tally
) -> None:
    """Kills aimed at the edges: startup and planning, around the first snapshot, the very end.

    The kill moments are swept over a window in small steps instead of drawn at random, so
    the edges are hit on every CI run. Each step starts from an empty folder.
    """
    setup = Setup(seed=4242, delay=0.001, interval=5, durability="journal")
    plan_id = crash_plan_id(SIZE, setup.seed)
    clean = tmp_path / "clean.txt"
    job = {
        "module": "tests.crash_worker",
        "out": str(clean),
        "argv": setup.args(tmp_path / "clean-cp", tmp_path / "c.log"),
    }
    started = time.monotonic()
    assert fork_server.run([job], kill_after=None)[0]["returncode"] == 0
    duration = time.monotonic() - started
    clean_digest = clean.read_text().splitlines()[-1]
    low, high = {"startup": (0.0, 0.06), "after-completion": (duration * 0.6, duration * 1.1)}[
        moment
    ]
    steps = 16
    for step in range(steps):
        folder = tmp_path / f"step-{step}"
        checkpoint_dir, log, out = folder / "cp", folder / "effects.log", folder / "out.txt"
        folder.mkdir()
        job = {
            "module": "tests.crash_worker",
            "argv": setup.args(checkpoint_dir, log),
            "out": str(out),
        }
        (result,) = fork_server.run([job], kill_after=low + (high - low) * step / (steps - 1))
        assert result["returncode"] in (0, -signal.SIGKILL), out.read_text()[-3000:]
        recorded = recorded_completed(checkpoint_dir, plan_id)
        assert library_view(checkpoint_dir, plan_id) == recorded
        tally.add("crash loop: SIGKILLs survived", result["killed"])
        tally.add(f"crash loop: swept kills ({moment})", result["killed"])
        if result["killed"] and len(recorded) == SIZE:
            tally.add("crash loop: swept kills after every node was recorded")
        # Whatever the kill hit, the next call resumes (or returns the stored result).
        offset = log.stat().st_size if log.exists() else 0
        (result,) = fork_server.run([job], kill_after=None)
        assert result["returncode"] == 0, out.read_text()[-3000:]
        assert not set(log_lines(log, offset)) & recorded
        assert out.read_text().splitlines()[-1] == clean_digest
        final_checks(checkpoint_dir, plan_id)
