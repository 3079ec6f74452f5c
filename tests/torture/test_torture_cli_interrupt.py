"""Ctrl-C at random moments of `vibe-planner run`: the command always ends, and a resume finishes.

An attack saw `vibe-planner run` hang after one Ctrl-C in 1 of 30 tries (the checkpoint writer
missed its close). Here each try presses Ctrl-C after a seeded random number of progress lines
, with a hang guard on the command's exit; then `resume`
completes the plan without running a node that a checkpoint or the journal recorded.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
from pathlib import Path

import orjson

from tests.helpers import completed_in_chain
from tests.test_cli import CONSTRAINT, CP, DELAY, PLAN_ID, SCRIPT, VIBE, LineReader, cli, environment
from tests.test_crash import recorded_completed
from tests.torture.support import Tally

TRIES, LONG_TRIES = 8, 60


def test_ctrl_c_at_random_moments_never_hangs_the_cli(tmp_path: Path, long_mode: bool, tally: Tally) -> None:
    rng = random.Random(30)
    for attempt in range(LONG_TRIES if long_mode else TRIES):
        cwd = tmp_path / f"try-{attempt}"
        cwd.mkdir()
        lines_before_interrupt = rng.randint(1, 14)  # after the first line the CLI is up
        code = interrupt_after(cwd, lines_before_interrupt, delay=rng.choice(["0", "0.001", "0.01"]))
        assert code in (0, 130, -signal.SIGINT), f"try {attempt}: exit code {code}"
        if code == -signal.SIGINT:
            # Killed by the signal itself: only possible once `main` has returned, i.e. after
            # the run ended; its last checkpoint then holds the whole plan.
            folder = cwd / "cps" / PLAN_ID
            latest = orjson.loads(max(folder.glob("cp-*.json")).read_bytes())
            done = completed_in_chain(folder, latest)
            assert len(done) == 11, f"try {attempt}: killed by SIGINT mid-run"
        tally.add("cli interrupts: Ctrl-C pressed", 1)
        tally.add(f"cli interrupts: exit {code}", 1)
        recorded = recorded_completed(cwd / "cps", PLAN_ID)
        resumed = cli(cwd, "resume", PLAN_ID, *CP)
        if not (cwd / "cps" / PLAN_ID).exists():
            assert resumed.returncode != 0  # interrupted before the planned snapshot: nothing to resume
            continue
        assert resumed.returncode == 0, resumed.stderr
        match = re.search(r"11/11 nodes completed \((\d+) run now, (\d+) restored\)", resumed.stdout)
        assert match is not None, resumed.stdout
        assert int(match.group(2)) == len(recorded)  # what was recorded did not run again
        folder = cwd / "cps" / PLAN_ID
        latest = orjson.loads(max(folder.glob("cp-*.json")).read_bytes())
        # "final", or the "cancelled" one of a run stopped after its last node (already whole).
        assert len(completed_in_chain(folder, latest)) == 11


def interrupt_after(cwd: Path, lines: int, *, delay: str) -> int:
    """Start a run, press Ctrl-C after *lines* progress lines; return its exit code."""
    args = ["run", VIBE, "--constraint", CONSTRAINT, "--checkpoint-interval", "2", *CP]
    with subprocess.Popen([str(SCRIPT), *args], cwd=cwd, env=environment(**{DELAY: delay}), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        try:
            assert proc.stdout is not None
            reader = LineReader(proc.stdout)
            seen = 0
            while seen < lines:
                try:
                    reader.wait_for(lambda line: line.startswith("["))
                except AssertionError:
                    break  # the output ended: the run finished first
                seen += 1
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"vibe-planner run hung after Ctrl-C ({seen} lines seen)") from None
        finally:
            if proc.poll() is None:
                proc.kill()
