"""Run the suite: every workload, repetition and system, each run in a fresh process.

Repetitions are interleaved (rep 1 of every system, then rep 2, ...; the system order flips
every other rep), so a peer and its vibe_planner pair run close together in time and the
ratios taken rep by rep cancel most of the machine's drift.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import derive
from .run_one import MARKER
from .systems import System, not_applicable
from .workloads import Workload, make_workload, result_key

__all__ = ["ROOT", "Settings", "check_systems", "run_suite"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    """How big, how many times, and with what limits the suite runs."""

    sizes: dict[str, int]
    reps: int
    workloads: list[str]
    systems: list[System]
    deadline: float
    """Seconds a measured run may take before it is stopped and reported as not finished."""
    crash_cap: float
    """Seconds the run to be killed may take to reach half way before it is killed anyway;
    also the deadline of the resume that follows."""
    slow_after: float = 30.0
    """A system whose first rep of a workload takes longer than this runs only `slow_reps`."""
    slow_reps: int = 3
    jobs: int = 1
    """Runs at once. 1 for real numbers; more only to check the harness quickly."""
    python: str = sys.executable
    warmup: bool = True
    log: Any = field(default=sys.stderr)
    sweeps: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Workloads run at several sizes (each size's results keyed ``<key>-<size>``)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _parse(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            parsed: dict[str, Any] = json.loads(line[len(MARKER):])
            return parsed
    return None


def child(settings: Settings, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.run_one ARGS``; return its figures or what went wrong."""
    cmd = [settings.python, "-m", "bench.run_one", *args]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"killed after {timeout:.0f} s (hung)"}
    parsed = _parse(done.stdout)
    if parsed is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"ok": False, "error": f"exit {done.returncode}: {' | '.join(tail)}"[:500]}
    return parsed


def check_systems(settings: Settings) -> dict[str, dict[str, Any]]:
    """Ask a child process whether each system imports; return availability by name."""
    names = [system.name for system in settings.systems]
    found = child(settings, ["--check", ",".join(names)], timeout=300)
    systems: dict[str, dict[str, Any]] = found.get("systems", {})
    reason = found.get("error", "the check did not report")
    return {name: systems.get(name, {"available": False, "reason": reason}) for name in names}


def _run_args(system: System, workload: Workload, workdir: Path) -> list[str]:
    return [system.name, workload.key, "--size", str(workload.size), "--seed", str(workload.seed),
            "--workdir", str(workdir)]


def run_once(settings: Settings, system: System, workload: Workload) -> dict[str, Any]:
    """One measured run of *system* on *workload* in a fresh process and a fresh folder."""
    workdir = Path(tempfile.mkdtemp(prefix="vibe-bench-"))
    try:
        if workload.key == "resume":
            return _crash_and_resume(settings, system, workload, workdir)
        args = [*_run_args(system, workload, workdir), "--deadline", str(settings.deadline)]
        if settings.warmup:
            args.append("--warmup")
        return child(settings, args, timeout=settings.deadline + 120)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _crash_and_resume(
    settings: Settings, system: System, workload: Workload, workdir: Path
) -> dict[str, Any]:
    """Start the plan, SIGKILL it once half its nodes ran, then time the resume."""
    log = workdir / "side-effects.log"
    args = [*_run_args(system, workload, workdir / "state"), "--log", str(log)]
    with open(workdir / "crash.stderr", "wb") as stderr:
        proc = subprocess.Popen([settings.python, "-m", "bench.run_one", *args], cwd=ROOT,
                                env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        started, reason = time.monotonic(), "half"
        while _count_lines(log) < workload.size // 2:
            if proc.poll() is not None:
                return {"ok": False, "error": f"the run ended (exit {proc.returncode}) before "
                        f"it could be killed half way ({_count_lines(log)} nodes)"}
            if time.monotonic() - started > settings.crash_cap:
                reason = f"cap of {settings.crash_cap:.0f} s"
                break
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _count_lines(log)
    args = _run_args(system, workload, workdir / "state")
    args += ["--resume", "--prior-log", str(log), "--deadline", str(settings.crash_cap)]
    result = child(settings, args, timeout=settings.crash_cap + 120)
    result |= {"killed_at": killed_at, "kill_reason": reason,
               "crash_run_s": time.monotonic() - started}
    return result


def run_suite(settings: Settings, available: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run every workload; return ``{workload: {"workload": ..., "systems": {name: ...}}}``."""
    results: dict[str, Any] = {}
    for key in settings.workloads:
        for size in settings.sweeps.get(key, (settings.sizes[key],)):
            workload = make_workload(key, size)
            results[result_key(key, size, settings.sweeps)] = _run_workload(settings, workload, available)
    return results


def _entry(system: System, key: str, available: dict[str, Any]) -> dict[str, Any]:
    reason = None
    if not available.get("available"):
        reason = f"unavailable: {available.get('reason')}"
    elif (why := not_applicable(system, key)) is not None:
        reason = f"not applicable: {why}"
    return {"label": system.label, "family": system.family, "variant": system.variant,
            "baseline": system.baseline, "skipped": reason, "runs": []}


def _run_workload(
    settings: Settings, workload: Workload, available: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    entries = {s.name: _entry(s, workload.key, available[s.name]) for s in settings.systems}
    reps = {name: settings.reps for name in entries}
    for rep in range(settings.reps):
        order = settings.systems if rep % 2 == 0 else list(reversed(settings.systems))
        due = [s for s in order if not entries[s.name]["skipped"] and rep < reps[s.name]
               and not entries[s.name].get("stopped")]
        with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
            done = list(pool.map(lambda s: _timed_run(settings, s, workload), due))
        for system, (run, took) in zip(due, done, strict=True):
            run |= {"rep": rep, "process_s": took}
            _record(settings, workload, entries[system.name], run)
            # A resume run is two processes (the killed run and the resume): more leeway.
            slow = settings.slow_after * (4 if workload.key == "resume" else 1)
            if rep == 0 and took > slow:
                reps[system.name] = min(settings.reps, settings.slow_reps)
            _progress(settings, workload, rep, system, run, took)
    return {"workload": workload.describe(), "systems": entries}


def _timed_run(settings: Settings, system: System, workload: Workload) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    run = run_once(settings, system, workload)
    return run, time.monotonic() - began


def _record(settings: Settings, workload: Workload, entry: dict[str, Any], run: dict[str, Any]) -> None:
    if run.get("ok"):
        run["figures"] = derive(workload, run)
    elif run.get("timed_out"):
        limit = settings.crash_cap if workload.key == "resume" else settings.deadline
        entry["stopped"] = f"did not finish within {limit:.0f} s"
        if workload.key == "resume":
            # Time to the first node and the re-runs seen so far are still measured.
            run["figures"] = {k: v for k, v in derive(workload, run).items() if k != "resume_wall_s"}
    entry["runs"].append(run)


def _progress(
    settings: Settings, workload: Workload, rep: int, system: System, run: dict[str, Any], took: float
) -> None:
    if run.get("ok"):
        what = ", ".join(f"{k}={v:.4g}" for k, v in list(run["figures"].items())[:3])
    else:
        what = "FAILED: " + str(run.get("error") or "timed out")[:160]
    where = f"{workload.key}-{workload.size} rep {rep + 1}/{settings.reps}"
    print(f"[{where}] {system.name:<22} {took:6.1f} s  {what}", file=settings.log, flush=True)
