"""The ``run``, ``resume`` and ``plan`` commands, and `build_planner`.

Each command takes the parsed arguments and returns the process exit code. Library errors
are left to propagate: `vibe_planner.cli._app.main` turns them into one line and an exit code.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from vibe_planner import (
    ExecutionResult,
    Handler,
    MetaPlanner,
    NodeContext,
    RetryPolicy,
    Vibe,
    WorkflowPersistenceManager,
    store_from_url,
)

from ._progress import open_display, watch
from ._render import make_console, print_plan, print_summary, resume_command

__all__ = [
    "EXIT_CORRUPT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "OFFLINE_DELAY_ENV",
    "UsageError",
    "build_planner",
    "execute",
    "persistence_manager",
    "plan_command",
    "resume_run_command",
    "run_command",
]

EXIT_OK = 0
"""The command did what was asked (for ``run``/``resume``: every node completed)."""
EXIT_FAILED = 1
"""The run ended with failed nodes, planning failed, or another error."""
EXIT_USAGE = 2
"""Bad command line or input: arguments, vibe, ids, unknown or mismatched checkpoint."""
EXIT_CORRUPT = 3
"""A checkpoint or journal file is damaged (``verify`` found one, or a command needed one)."""
EXIT_LOCKED = 4
"""Another process is running the plan."""
EXIT_WAITING = 5
"""The run stopped to wait for a person's answer (``respond``/``approve``, then ``resume``)."""
EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C (128 + SIGINT), after writing a ``cancelled`` checkpoint."""

OFFLINE_DELAY_ENV = "VIBE_PLANNER_OFFLINE_DELAY"
"""Seconds each offline ``llm`` node sleeps: makes offline runs slow enough to watch or Ctrl-C."""


class UsageError(Exception):
    """A bad setting the argument parser could not catch (such as an environment variable)."""


def build_planner(args: argparse.Namespace) -> MetaPlanner:
    """Return the `MetaPlanner` every command uses, configured from the arguments.

    The one place that decides planner, handlers, persistence and execution settings: LLM
    configuration belongs here too. Options a command does not have take their defaults.
    """
    retry = RetryPolicy(max_attempts=args.max_attempts) if _get(args, "max_attempts") else None
    planner = MetaPlanner(
        persistence_manager=persistence_manager(args),
        checkpoint_interval=_get(args, "checkpoint_interval", 5),
        max_concurrency=_get(args, "concurrency", 16),
        node_timeout=_get(args, "node_timeout", 300.0),
        retry=retry,
    )
    delay = _offline_delay()
    if planner.offline and delay:
        planner.handlers["llm"] = _slowed(planner.handlers["llm"], delay)
    return planner


def persistence_manager(args: argparse.Namespace) -> WorkflowPersistenceManager:
    """Return the manager of the store the arguments name (``--store``, else ``--checkpoint-dir``)."""
    store = _get(args, "store")
    if store is None:
        return WorkflowPersistenceManager(args.checkpoint_dir)
    ttl = _get(args, "lease_ttl")
    return WorkflowPersistenceManager(store=store_from_url(store, **({"lease_ttl": ttl} if ttl else {})))


def run_command(args: argparse.Namespace) -> int:
    """``vibe-planner run VIBE``: plan and execute, resuming the plan's latest checkpoint if any."""
    vibe = Vibe(description=args.vibe, style=args.style, constraints=args.constraint or [])
    plan_id = args.plan_id or vibe.default_plan_id()
    planner = build_planner(args)
    return _execute(args, planner, plan_id,
                    lambda: planner.execute_with_resume(vibe, plan_id=plan_id))


def resume_run_command(args: argparse.Namespace) -> int:
    """``vibe-planner resume PLAN_ID``: continue a plan from its latest (or a given) checkpoint."""
    planner = build_planner(args)
    return _execute(args, planner, args.plan_id,
                    lambda: planner.resume(args.plan_id, checkpoint_id=args.checkpoint))


def plan_command(args: argparse.Namespace) -> int:
    """``vibe-planner plan VIBE``: print the DAG the planner makes, without running it."""
    vibe = Vibe(description=args.vibe, style=args.style, constraints=args.constraint or [])
    planner = build_planner(args)
    plan = anyio.run(lambda: planner.plan(vibe, plan_id=args.plan_id))
    print_plan(make_console(sys.stdout), plan, args.format)
    return EXIT_OK


def _execute(
    args: argparse.Namespace,
    planner: MetaPlanner,
    plan_id: str,
    call: Callable[[], Awaitable[ExecutionResult]],
) -> int:
    """Run *call* with a progress display, print the outcome, and return the exit code.

    On Ctrl-C, `anyio.run` (asyncio) cancels the run, whose cancellation writes a
    ``cancelled`` checkpoint, and then raises `KeyboardInterrupt` here.
    """
    console = make_console(sys.stdout)
    try:
        with open_display(console, quiet=args.json) as display:
            result = anyio.run(watch, planner, display, call)
    except KeyboardInterrupt:
        _report_interrupt(planner, plan_id, args.checkpoint_dir)
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.write(result.model_dump_json() + "\n")
    else:
        print_summary(console, result, args.checkpoint_dir)
    return {"completed": EXIT_OK, "failed": EXIT_FAILED, "waiting": EXIT_WAITING}.get(
        result.status, EXIT_INTERRUPTED)


execute = _execute


def _report_interrupt(planner: MetaPlanner, plan_id: str, checkpoint_dir: str) -> None:
    """Say how to continue: resume if a checkpoint exists, else run the same command again."""
    try:
        saved = bool(anyio.run(planner.list_checkpoints, plan_id))
    except Exception:  # a damaged folder still holds checkpoints: resume will say what is wrong
        saved = True
    if saved:
        hint = f"progress is saved; resume with: {resume_command(plan_id, checkpoint_dir)}"
    else:
        hint = "no checkpoint was written yet; run the same command again to start over"
    print(f"vibe-planner: interrupted; {hint}", file=sys.stderr, flush=True)


def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def _offline_delay() -> float:
    raw = os.environ.get(OFFLINE_DELAY_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        delay = float(raw)
    except ValueError:
        raise UsageError(f"{OFFLINE_DELAY_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0 <= delay < math.inf:
        raise UsageError(f"{OFFLINE_DELAY_ENV} must be >= 0, got {raw!r}")
    return delay


def _slowed(handler: Handler, delay: float) -> Handler:
    """Return *handler*, sleeping *delay* seconds (cancellably) before each call."""

    async def slowed(context: NodeContext) -> Any:
        await anyio.sleep(delay)
        return await handler(context)

    return slowed
