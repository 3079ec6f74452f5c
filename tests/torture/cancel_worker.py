"""Worker of `test_torture_cancel.py`: cancellation loops, run in a child process.

Usage: python -m tests.torture.cancel_worker BACKEND SEED CASES WORKDIR

Each case is a seeded random DAG run first without interruption (the expected outputs), then
cancelled by its caller at seeded points and resumed, again and again, until a call completes.
The caller's `CancelScope` is cancelled after the k-th progress event (from the progress
callback), from inside the handler of the k-th node to start, or after k turns of the event
loop (a side task counting `anyio.lowlevel.checkpoint()` calls). Every invariant is checked
here, after every call; a violation raises, so the process exits non-zero with a traceback.

A call that hangs makes `faulthandler` dump every thread's stack and exit the process
(`ATTEMPT_TIMEOUT`); the test waits for the process with a timeout of its own as well.

Prints one JSON line per call (what was tried and what happened) and a summary line last.
"""

from __future__ import annotations

import faulthandler
import hashlib
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.helpers import StaticPlanner, random_dag
from tests.test_crash import recorded_completed
from vibe_planner import (
    CheckpointInfo,
    ExecutionResult,
    MetaPlanner,
    NodeContext,
    ProgressEvent,
    Vibe,
    WorkflowNode,
    WorkflowPersistenceManager,
)

ATTEMPT_TIMEOUT = 60.0  # seconds: far more than any call takes; only a hang gets there
BIG = 3_000_000  # characters of the large output some cases have
MODES = ("event", "node", "turns")


def pure_output(node_id: str, inputs: dict[str, Any], big: bool = False) -> Any:
    """A node's output: a function of its id and inputs only (so any two runs agree)."""
    digest = hashlib.blake2b(orjson.dumps([node_id, inputs], option=orjson.OPT_SORT_KEYS),
                             digest_size=8).hexdigest()
    output: dict[str, Any] = {"id": node_id, "digest": digest, "nested": [digest[:4], {"k": [1]}]}
    if big:
        output["pad"] = "x" * BIG
    return output


@dataclass
class Case:
    """One seeded plan and the settings it runs with."""

    seed: int
    nodes: list[WorkflowNode]
    styles: dict[str, str]
    big: str | None
    interval: int
    durability: str
    concurrency: int

    @classmethod
    def draw(cls, seed: int) -> Case:
        rng = random.Random(seed)
        nodes = random_dag(rng.randint(4, 30), seed, max_deps=rng.choice([1, 2, 3]))
        styles = {n.id: rng.choice(["instant", "instant", "yield", "sleep"]) for n in nodes}
        big = rng.choice([n.id for n in nodes]) if rng.random() < 0.2 else None
        return cls(seed=seed, nodes=nodes, styles=styles, big=big,
                   interval=rng.randint(2, 5) if big else rng.randint(1, 5),
                   durability=rng.choice(["journal", "interval"]),
                   concurrency=rng.choice([1, 2, 4, 8]))

    @property
    def vibe(self) -> str:
        return f"cancel torture {self.seed}"

    @property
    def plan_id(self) -> str:
        return Vibe(description=self.vibe).default_plan_id()


@dataclass
class Trigger:
    """Where the current call is cancelled: after the k-th event, node start or loop turn."""

    mode: str
    k: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    events: int = 0
    starts: int = 0


class Runner:
    """Runs one case's calls; counts handler executions per node."""

    def __init__(self, case: Case, checkpoint_dir: Path) -> None:
        self.case = case
        self.checkpoint_dir = checkpoint_dir
        self.manager = WorkflowPersistenceManager(checkpoint_dir)
        self.runs: Counter[str] = Counter()
        self.trigger: Trigger | None = None
        self.turns = 0
        self.planner = MetaPlanner(
            planner=StaticPlanner(case.nodes), handlers={"work": self.handler},
            persistence_manager=self.manager, checkpoint_interval=case.interval,
            durability=case.durability,  # type: ignore[arg-type]
            max_concurrency=case.concurrency, node_timeout=None, progress_callback=self.on_event)

    async def handler(self, ctx: NodeContext) -> Any:
        node_id = ctx.node.id
        self.runs[node_id] += 1
        trigger = self.trigger
        if trigger is not None and trigger.mode == "node":
            trigger.starts += 1
            if trigger.starts == trigger.k:
                trigger.scope.cancel()
        style = self.case.styles[node_id]
        if style == "yield":
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        elif style == "sleep":
            await anyio.sleep(0.001)
        return pure_output(node_id, ctx.inputs, big=node_id == self.case.big)

    def on_event(self, event: ProgressEvent) -> None:
        trigger = self.trigger
        if trigger is not None and trigger.mode == "event":
            trigger.events += 1
            if trigger.events == trigger.k:
                trigger.scope.cancel()

    async def count_turns(self, trigger: Trigger | None) -> None:
        """Count loop turns; cancel the call after the trigger's k-th (if it counts turns)."""
        while True:
            await anyio.lowlevel.checkpoint()
            self.turns += 1
            if trigger is not None and trigger.mode == "turns" and self.turns == trigger.k:
                trigger.scope.cancel()

    async def call(self, trigger: Trigger | None) -> ExecutionResult | None:
        """One `execute_with_resume`, cancelled by *trigger*; None if it was cancelled."""
        self.trigger, self.turns = trigger, 0
        scope = trigger.scope if trigger is not None else anyio.CancelScope()
        result = None
        faulthandler.dump_traceback_later(ATTEMPT_TIMEOUT, exit=True)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.count_turns, trigger)
                with scope:
                    result = await self.planner.execute_with_resume(self.case.vibe)
                tg.cancel_scope.cancel()
        finally:
            faulthandler.cancel_dump_traceback_later()
            self.trigger = None
        if result is None:
            assert scope.cancel_called and scope.cancelled_caught, "the call returned nothing"
        return result

    async def checkpoints(self) -> list[CheckpointInfo]:
        return await self.manager.list_checkpoints(self.case.plan_id)

    async def library_view(self) -> set[str]:
        """What the library would resume from: the latest checkpoint loads, plus its journal."""
        latest = await self.manager.latest(self.case.plan_id)  # raises if damaged
        restored = await self.manager.restore(self.case.plan_id)
        if latest is None:
            assert restored is None
            return set()
        assert restored is not None and restored.checkpoint == latest
        return set(latest.completed_nodes) | {r["node_id"] for r in restored.journal_records}


def all_outputs(result: ExecutionResult) -> dict[str, Any]:
    return {node_id: r.output for node_id, r in result.node_results.items()}


async def clean_run(case: Case, workdir: Path) -> tuple[dict[str, Any], int]:
    """The outputs of a run nobody interrupts, and the loop turns it took."""
    runner = Runner(case, workdir / "clean")
    result = await runner.call(None)
    assert result is not None and result.status == "completed"
    return all_outputs(result), runner.turns


def draw_trigger(rng: random.Random, case: Case, remaining: int, turns: int) -> Trigger:
    """A cancel point spread over what is left of the run (sometimes past its end)."""
    mode = rng.choice(MODES)
    size = len(case.nodes)
    if mode == "event":  # a start and a completion per node, a few checkpoints, two more
        k = rng.randint(1, int(1.6 * remaining) + 3)
    elif mode == "node":
        k = rng.randint(1, max(1, remaining))
    else:
        k = rng.randint(1, max(2, int(1.2 * turns * max(remaining, 1) / size) + 2))
    return Trigger(mode, k)


async def check_after(runner: Runner, before: set[str], ran: set[str],
                      infos_before: list[CheckpointInfo], result: ExecutionResult | None,
                      clean: dict[str, Any], where: str) -> set[str]:
    """The invariants after one call, wherever its cancellation landed; return what is recorded."""
    case = runner.case
    again = ran & before
    assert not again, f"{where}: nodes recorded as completed ran again: {sorted(again)}"
    after = recorded_completed(runner.checkpoint_dir, case.plan_id)
    assert before <= after, f"{where}: recorded completions were lost: {sorted(before - after)}"
    assert await runner.library_view() == after, f"{where}: the library disagrees with the files"
    infos = await runner.checkpoints()
    assert not [i.error for i in infos if i.error], f"{where}: a snapshot is damaged"
    new = [i for i in infos if i.checkpoint_id not in {j.checkpoint_id for j in infos_before}]
    size = len(case.nodes)
    if result is not None:
        assert result.status == "completed", f"{where}: a call returned {result.status}"
        assert all(r.status == "completed" for r in result.node_results.values())
        assert all_outputs(result) == clean, f"{where}: outputs differ from a clean run"
        assert len(after) == size
        return after
    if not new:
        # Cancelled before its first snapshot: a fresh run awaits "planned" before any node
        # starts, a resume writes "cancelled" whenever its scheduler was entered.
        assert not ran, f"{where}: nodes ran but the cancelled call wrote no checkpoint"
        return after
    newest = await runner.manager.get_checkpoint(new[0].checkpoint_id)  # newest first
    assert newest.reason in ("cancelled", "planned", "final"), f"{where}: left {newest.reason}"
    assert not newest.failed_nodes, f"{where}: a cancellation failed {newest.failed_nodes}"
    if newest.reason == "planned":
        assert not ran, f"{where}: nodes ran, yet the newest checkpoint is 'planned'"
    if newest.reason == "final":
        assert len(newest.completed_nodes) == size, f"{where}: an incomplete 'final' checkpoint"
    for node_id in newest.completed_nodes:
        assert newest.node_results[node_id].output == clean[node_id], f"{where}: {node_id}"
    return after


async def run_case(case: Case, workdir: Path, rng: random.Random, out: Any) -> dict[str, int]:
    clean, turns = await clean_run(case, workdir)
    runner = Runner(case, workdir / "cp")
    counts: Counter[str] = Counter()
    for call in range(100):
        before = recorded_completed(runner.checkpoint_dir, case.plan_id)
        infos_before = await runner.checkpoints()
        remaining = len(case.nodes) - len(before)
        trigger = draw_trigger(rng, case, remaining, turns) if call < 8 else None
        runs_before = runner.runs.copy()
        result = await runner.call(trigger)
        ran = {n for n in runner.runs if runner.runs[n] > runs_before[n]}
        where = f"seed {case.seed} call {call} ({trigger and (trigger.mode, trigger.k)})"
        recorded = await check_after(runner, before, ran, infos_before, result, clean, where)
        counts["protected node checks"] += len(before)
        line = {"seed": case.seed, "call": call, "trigger": trigger and [trigger.mode, trigger.k],
                "cancelled": result is None, "ran": len(ran), "before": len(before),
                "after": len(recorded)}
        out.write(orjson.dumps(line).decode() + "\n")
        if result is None:
            counts["cancellations"] += 1
            counts[f"cancellations ({trigger and trigger.mode})"] += 1
            if not ran:
                counts["cancellations before any node ran"] += 1
            continue
        counts["cancel points past the end" if trigger else "uncancelled resumes"] += 1
        break
    else:
        raise AssertionError(f"seed {case.seed}: never completed")
    # One more call: the stored result, nothing runs again.
    runs_before = runner.runs.copy()
    result = await runner.call(None)
    assert result is not None and all_outputs(result) == clean and runner.runs == runs_before
    counts["re-runs of unrecorded work"] += sum(runner.runs.values()) - len(case.nodes)
    counts["plans completed"] += 1
    if case.big:
        counts["plans with a large output"] += 1
    return dict(counts)


async def main_async(seed: int, cases: int, workdir: Path) -> dict[str, int]:
    rng = random.Random(seed)
    totals: Counter[str] = Counter()
    for index in range(cases):
        case = Case.draw(seed * 10_000 + index)
        folder = workdir / f"case-{index}"
        folder.mkdir(parents=True)
        totals.update(await run_case(case, folder, rng, sys.stdout))
    return dict(totals)


def main() -> None:
    backend, seed, cases, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    totals = anyio.run(main_async, seed, cases, Path(workdir), backend=backend)
    print(orjson.dumps({"summary": totals}).decode())


if __name__ == "__main__":
    main()
