"""Cancellations, kills inside a resumed run's first snapshot, and misbehaving handlers.

The loops run in child processes (`cancel_worker.py`, `misbehave_worker.py`,
`resumed_kill_worker.py`), waited for with a timeout: a run that hangs (as cancelled runs once
did, in the checkpoint writer) fails its test instead of hanging the suite, and the worker's
`faulthandler` prints where it hung. The workers check every invariant themselves, after every
call, and exit non-zero with the assertion's traceback when one does not hold.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.torture.resumed_kill_worker import vibe
from tests.torture.support import ROOT, ForkServer, Tally, log_lines, recorded_completed
from vibe_planner import Vibe

BACKENDS = [pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")]
CANCEL_CASES = (30, 300)  # plans per backend: fast subset, --long
MISBEHAVE_CASES = (60, 500)
RESUMED_KILL_PLANS = (6, 40)


def run_worker(module: str, args: list[str], timeout: float,
               env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run a worker to its end; fail the test if it hangs or exits non-zero."""
    command = [sys.executable, "-m", module, *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, cwd=ROOT,
                              env=environment)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"").decode()[-2000:]
        pytest.fail(f"{module} {args} hung ({timeout} s); last lines:\n{tail}")
    if done.returncode != 0:
        pytest.fail(f"{module} {args} exited {done.returncode}\nstdout (end):\n"
                    f"{done.stdout.decode()[-2000:]}\nstderr (end):\n{done.stderr.decode()[-6000:]}")
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


# -- 1. cancellation at random points, then resumes --------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_cancel_at_random_points_then_resume(
    tmp_path: Path, backend: str, long_mode: bool, tally: Tally
) -> None:
    """Hundreds of cancellations by the caller, each followed by a resume, to the end.

    Per call (in the worker): it returned; the latest checkpoint loads and the library's view
    equals the files'; nothing recorded before ran again or was lost; a cancelled call left a
    ``cancelled`` checkpoint (``planned`` if no node had started, ``final`` if the cancel came
    after the last node), or none if no node ran; no node was failed by the cancellation. Per
    plan: the outputs equal an uninterrupted run's, and one more call runs nothing.
    """
    cases = CANCEL_CASES[long_mode]
    lines = run_worker("tests.torture.cancel_worker",
                       [backend, "17" if long_mode else "3", str(cases), str(tmp_path)],
                       timeout=1800 if long_mode else 300)
    summary = lines[-1]["summary"]
    assert summary["plans completed"] == cases
    # The cancel points are drawn so that most calls are cancelled: a loop that stopped
    # cancelling (a trigger that never fires) would show here.
    assert summary["cancellations"] >= cases, summary
    assert all(summary.get(f"cancellations ({mode})", 0) for mode in ("event", "node", "turns"))
    for key, value in summary.items():
        tally.add(f"cancel loop: {key}", value)
    tally.add(f"cancel loop: cancellations on {backend}", summary["cancellations"])


# -- 2. SIGKILL inside the resumed run's first snapshot ------------------------------------------------
def kill_attempt(server: ForkServer, folder: Path, args: list[str], out: Path) -> int:
    job = {"module": "tests.torture.resumed_kill_worker", "argv": args, "out": str(out)}
    (result,) = server.run([job], kill_after=None, timeout=120)
    assert not result["timed_out"], f"worker hung: {out.read_text()[-2000:]}"
    assert result["returncode"] in (0, -signal.SIGKILL), out.read_text()[-3000:]
    return int(result["returncode"])


def test_kill_inside_the_resumed_snapshot_then_resume(
    tmp_path: Path, fork_server: ForkServer, long_mode: bool, tally: Tally
) -> None:
    """A run is SIGKILLed at its k-th node; then each of 1-3 resumes SIGKILLs itself inside its
    ``resumed`` snapshot (before the file is written, or right after), deterministically; then
    a last resume finishes. After each attempt nothing recorded ran again nor was lost; at the
    end the outputs equal a clean run's."""
    rng = random.Random(5150 if long_mode else 505)
    journaled_at_kill = kills = 0
    for plan in range(RESUMED_KILL_PLANS[long_mode]):
        size, seed = rng.randint(30, 120), 9000 + plan
        interval = rng.choice([3, 7, 1000])
        folder = tmp_path / f"plan-{plan}"
        folder.mkdir()
        checkpoint_dir, log, out, note = (folder / "cp", folder / "effects.log",
                                          folder / "out.txt", folder / "kill.json")
        plan_id = Vibe(description=vibe(size, seed)).default_plan_id()

        def args(kill: str, directory: Path = checkpoint_dir, effects: Path = log,
                 plan: tuple[int, int, int] = (size, seed, interval), note: Path = note) -> list[str]:
            return [str(directory), str(effects), *map(str, plan), kill, str(note)]

        clean_out = folder / "clean.txt"
        assert kill_attempt(fork_server, folder, args("none", folder / "clean-cp",
                                                      folder / "clean.log"), clean_out) == 0
        clean_digest = clean_out.read_text().splitlines()[-1]

        kills_of_plan = [f"node:{rng.randint(2, size)}"]
        kills_of_plan += [rng.choice(["resumed-before", "resumed-after"])
                          for _ in range(rng.randint(1, 3))]
        for kill in [*kills_of_plan, "none"]:
            recorded = recorded_completed(checkpoint_dir, plan_id)
            offset = log.stat().st_size if log.exists() else 0
            note.unlink(missing_ok=True)
            code = kill_attempt(fork_server, folder, args(kill), out)
            ran = log_lines(log, offset)
            again = set(ran) & recorded
            assert not again, f"plan {plan} ({kill}): recorded nodes ran again: {sorted(again)}"
            after = recorded_completed(checkpoint_dir, plan_id)
            assert recorded <= after, f"plan {plan} ({kill}): lost {sorted(recorded - after)}"
            tally.add("resumed-snapshot kills: protected node checks", len(recorded))
            if kill == "none":
                assert code == 0
            elif kill.startswith("resumed-") and len(recorded) < size:
                # Deterministic: an unfinished plan's resume always writes a "resumed" snapshot.
                assert code == -signal.SIGKILL and note.exists(), f"plan {plan}: {kill} missed"
                kills += 1
                journaled_at_kill += json.loads(note.read_text())["journal_results"] > 0
                tally.add(f"resumed-snapshot kills: SIGKILLs ({kill})")
        status, digest = out.read_text().splitlines()[-2:]
        assert status.startswith("completed") and digest == clean_digest, f"plan {plan}: {status}"
        runs = Counter(log_lines(log))
        assert set(runs) == {f"n{i:05d}" for i in range(size)}
        tally.add("resumed-snapshot kills: re-runs of unrecorded work", sum(runs.values()) - size)
        tally.add("resumed-snapshot kills: plans completed")
    # Not a race: instant handlers complete the first streak of ready nodes before the writer's
    # first batch, so dying runs' journals held records before their first snapshot.
    assert kills and journaled_at_kill, (kills, journaled_at_kill)
    tally.add("resumed-snapshot kills: with journal records before the snapshot", journaled_at_kill)


# -- 3. misbehaving handlers ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_misbehaving_handlers_over_random_dags(
    tmp_path: Path, backend: str, long_mode: bool, tally: Tally
) -> None:
    """Random mixes of misbehaving handlers (`misbehave_worker.BEHAVIOURS`) over random DAGs.

    Per plan (in the worker): each node's status and error type are those its behaviour and
    its dependencies imply, or the run raises one of the reached BaseExceptions as itself
    after a ``cancelled`` checkpoint; the checkpoint on disk agrees; completed outputs equal
    a clean run's (inputs mutated, outputs changed after being returned); a resume with
    well-behaved handlers completes with a clean run's outputs and runs nothing recorded.
    """
    cases = MISBEHAVE_CASES[long_mode]
    lines = run_worker("tests.torture.misbehave_worker",
                       [backend, "23" if long_mode else "2", str(cases), str(tmp_path)],
                       timeout=1800 if long_mode else 300)
    summary = lines[-1]["summary"]
    assert summary["cases"] == cases
    assert any(key.startswith("raised ") for key in summary), summary
    assert summary.get("returned failed", 0) and summary.get("returned completed", 0), summary
    for key, value in summary.items():
        tally.add(f"misbehaving handlers ({backend}): {key}", value)


@pytest.mark.parametrize(
    ("backend", "behaviour"),
    [
        pytest.param("asyncio", "interrupt", id="asyncio-KeyboardInterrupt"),
        pytest.param("asyncio", "exit", id="asyncio-SystemExit"),
        pytest.param("asyncio", "bad_str", id="asyncio-exception-with-broken-str"),
        pytest.param("trio", "bad_str", id="trio-exception-with-broken-str"),
    ],
)
def test_one_misbehaviour(tmp_path: Path, backend: str, behaviour: str, tally: Tally) -> None:
    """Misbehaviours kept out of the random mixes while they break the run, each alone in a->b->c.

    - A handler raising KeyboardInterrupt or SystemExit on asyncio: asyncio stops the event
      loop and cancels every task natively, the checkpoint writer among them (a shielded scope
      does not stop a native cancel); the run then waits for its "cancelled" snapshot forever
      and the process never exits. Expected: `anyio.run` raises it, and a resume works.
    - A handler raising an exception whose ``__str__`` raises: expected, the node fails with
      that exception's type; the scheduler's `_describe` lets the error out and the run dies.
    """
    run_worker("tests.torture.misbehave_worker", ["one", backend, behaviour, str(tmp_path)],
               timeout=90, env={"TORTURE_RUN_TIMEOUT": "15"})
    tally.add("misbehaving handlers: single misbehaviours")
