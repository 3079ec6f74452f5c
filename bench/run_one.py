"""Run one system on one workload once, in this process, and print the figures as JSON.

Usage::

    python -m bench.run_one SYSTEM WORKLOAD --size N --seed S --workdir DIR [--log PATH]
        [--resume --prior-log PATH]
    python -m bench.run_one --check SYSTEM[,SYSTEM...]

The parent (`bench.runner`) starts one such process per run, so peak RSS is per run and a
crash stays contained. The last line of stdout is ``BENCH_RESULT <json>``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from .measure import (
    LoopLagProbe,
    NodeBody,
    bare_chain,
    bytes_written,
    cpu_seconds,
    peak_rss_mb,
)
from .systems import by_name
from .systems.base import RunEnv
from .workloads import make_workload

__all__ = ["main", "measure"]

MARKER = "BENCH_RESULT "


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, run and measure one run as *args* say."""
    system = by_name(args.system)
    workload = make_workload(args.workload, args.size, args.seed)
    adapter = importlib.import_module(system.module)
    body = NodeBody(workload, Path(args.log) if args.log else None)
    env = RunEnv(workdir=Path(args.workdir), body=body, resume=args.resume)
    await anyio.Path(env.workdir).mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    if args.warmup:
        await _warm_up(adapter, system.variant, workload.key, env.workdir / "warmup")
    setup_start = time.perf_counter()
    async with adapter.open_runner(workload, system.variant, env) as runner:
        figures["setup_s"] = time.perf_counter() - setup_start
        if args.resume:
            figures |= await _before_resume(runner, args.prior_log)
        probe = LoopLagProbe() if workload.probe else None
        written, cpu = bytes_written(), cpu_seconds()
        start = time.perf_counter()
        watchdog = Watchdog(args.deadline, lambda: _finish(dict(figures), body, start) | {
            "wall_s": time.perf_counter() - start, "status": "timed out", "timed_out": True})
        async with anyio.create_task_group() as tg:
            if probe is not None:
                tg.start_soon(probe.run)
            with anyio.move_on_after(args.deadline) as scope:
                outcome = await runner.run()
            tg.cancel_scope.cancel()
        watchdog.cancel()
        if scope.cancelled_caught:
            outcome = {"status": "timed out", "timed_out": True}
        figures["wall_s"] = time.perf_counter() - start
        figures["cpu_s"] = cpu_seconds() - cpu
        after = bytes_written()
        if written is not None and after is not None:
            figures["bytes_written"] = after - written
        figures |= outcome | runner.stats()
        if probe is not None:
            figures |= probe.results()
    body.close()
    if workload.key in ("fanout", "uneven"):
        figures["bare_chain_s"] = await bare_chain(workload)
    return _finish(figures, body, start)


def _finish(figures: dict[str, Any], body: NodeBody, start: float) -> dict[str, Any]:
    """Add what the node body saw: first start, nodes run, re-runs; and the peak RSS."""
    if body.first_start is not None:
        figures["first_node_s"] = body.first_start - start
    ran = list(body.ran)
    figures["nodes_run"] = len(ran)
    if "_prior" in figures:
        figures |= _reruns(ran, figures.pop("_prior"), figures.pop("_recorded"))
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


class Watchdog:
    """Reports and ends a run that overstays its deadline, even if the loop never yields.

    ``move_on_after`` only acts when the event loop gets control back; a system that blocks
    the loop for minutes (a synchronous checkpoint write per node) would ignore it. This
    thread prints the partial figures *report()* gives and ends the process.
    """

    def __init__(self, deadline: float | None, report: Callable[[], dict[str, Any]],
                 grace: float = 3.0) -> None:
        self._report = report
        self._timer = None if deadline is None else threading.Timer(deadline + grace, self._fire)
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        """The run ended in time."""
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        result = self._report() | {"ok": False, "stopped_by_watchdog": True}
        print(MARKER + json.dumps(result, default=str), flush=True)
        os._exit(0)


async def _warm_up(adapter: Any, variant: str, key: str, workdir: Path) -> None:
    """Run a 3-node version of the workload first, so one-time costs are not counted.

    Lazy initialisation (first-call caches, schema building) is paid once per process; an app
    runs many plans per process, so the measured run is the second one.
    """
    tiny = make_workload(key, 3, seed=0)
    body = NodeBody(tiny)
    await anyio.Path(workdir).mkdir(parents=True, exist_ok=True)
    async with adapter.open_runner(tiny, variant, RunEnv(workdir=workdir, body=body)) as runner:
        await runner.run()


async def _before_resume(runner: Any, prior_log: str | None) -> dict[str, Any]:
    prior = (await anyio.Path(prior_log).read_text()).split() if prior_log else []
    recorded = await runner.recorded()
    return {"_prior": prior, "_recorded": recorded, "recorded_complete": len(recorded),
            "ran_before_kill": len(prior)}


def _reruns(ran: list[str], prior: list[str], recorded: set[str]) -> dict[str, Any]:
    """How much work the resume repeated."""
    before = set(prior)
    again = [node_id for node_id in ran if node_id in before]
    return {
        "reruns_recorded": sum(1 for node_id in ran if node_id in recorded),
        "reruns_side_effects": len(again),
        "ran_before_kill_unrecorded": len(before - recorded),
        "duplicates_before_kill": len(prior) - len(before),
    }


def check(names: str) -> dict[str, Any]:
    """Import what each of the comma-separated systems needs; report availability by name."""
    return {"ok": True, "systems": {name: _check(name) for name in names.split(",") if name}}


def _check(name: str) -> dict[str, Any]:
    system = by_name(name)
    try:
        for module in (*system.requires, system.module):
            importlib.import_module(module)
    except Exception as exc:  # any import failure makes the peer unavailable
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return {"available": True, "versions": _versions(system.family)}


def _versions(family: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {"vibe_planner": ["vibe-planner", "anyio", "pydantic", "orjson"],
             "langgraph": ["langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite",
                           "aiosqlite"],
             "vibe-aigc": ["vibe-aigc"]}[family]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.run_one", description=__doc__)
    parser.add_argument("system", nargs="?")
    parser.add_argument("workload", nargs="?")
    parser.add_argument("--check", metavar="SYSTEMS", help="comma-separated systems to import")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--log", help="append each finished node's id to this file")
    parser.add_argument("--resume", action="store_true", help="resume from the workdir's state")
    parser.add_argument("--deadline", type=float, default=None,
                        help="stop the run after this many seconds and report it unfinished")
    parser.add_argument("--warmup", action="store_true", help="run a 3-node plan first")
    parser.add_argument("--prior-log", help="side-effect log of the killed run (with --resume)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run or check, print ``BENCH_RESULT <json>``."""
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.check:
            result = check(args.check)
        else:
            result = anyio.run(measure, args, backend="asyncio")
            result["ok"] = not result.get("timed_out")
    except Exception as exc:
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(MARKER + json.dumps(result, default=str), flush=True)
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
