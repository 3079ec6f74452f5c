"""The ``submit`` and ``worker`` commands: queue plans in a PostgreSQL store, and run them."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import anyio

from vibe_planner import PostgresCheckpointStore, Vibe, Worker

from ._commands import EXIT_OK, UsageError, build_planner

__all__ = ["STORE_ENV", "submit_command", "worker_command"]

STORE_ENV = "VIBE_PLANNER_STORE"
"""Names the store when ``--store`` is not given (keeps a password off the command line)."""


def submit_command(args: argparse.Namespace) -> int:
    """``vibe-planner --store URL submit VIBE``: queue a plan for the workers; print its id."""
    vibe = Vibe(description=args.vibe, style=args.style, constraints=args.constraint or [])
    planner = build_planner(args)
    store = _postgres(planner.persistence_manager.store, "submit")
    try:
        plan_id = anyio.run(lambda: planner.submit(vibe, plan_id=args.plan_id))
    finally:
        store.close()
    print(f"queued plan {plan_id}")
    return EXIT_OK


def worker_command(args: argparse.Namespace) -> int:
    """``vibe-planner --store URL worker``: run queued plans until SIGTERM or Ctrl-C."""
    planner = build_planner(args)
    store = _postgres(planner.persistence_manager.store, "worker")
    worker = Worker(planner, concurrency=args.plans, poll_interval=args.poll_interval)
    logging.getLogger("vibe_planner.workers").setLevel(logging.INFO)
    print(f"worker {worker.name}: running plans of {store.where}, {args.plans} at once", file=sys.stderr,
          flush=True)
    try:
        anyio.run(lambda: worker.serve(until_idle=args.until_idle))
    finally:
        store.close()
    done = sum(state == "completed" for state in worker.finished.values())
    print(f"worker {worker.name}: stopped; {done} plan(s) completed here", file=sys.stderr)
    return EXIT_OK


def _postgres(store: object, command: str) -> PostgresCheckpointStore:
    if not isinstance(store, PostgresCheckpointStore):
        raise UsageError(f"{command} needs a PostgreSQL store: --store postgresql://... "
                         f"(or {STORE_ENV})")
    return store


def add_commands(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """Add ``submit`` and ``worker`` to the command line."""
    from ._app import _execution_settings, _positive_float, _positive_int, _vibe_options

    submit = commands.add_parser("submit", parents=[common], help="queue a vibe for the workers")
    _vibe_options(submit)
    submit.add_argument("--plan-id", metavar="ID", help="plan id (default: derived from the vibe)")
    submit.set_defaults(handler=submit_command)
    worker = commands.add_parser("worker", parents=[common],
                                 help="run queued plans (and those of dead workers) until SIGTERM")
    worker.add_argument("--concurrency", dest="plans", metavar="N", type=_positive_int, default=4,
                        help="most plans run at once (default: 4)")
    worker.add_argument("--poll-interval", metavar="SECONDS", type=_positive_float, default=5.0,
                        help="most seconds between looks at the queue (default: 5)")
    worker.add_argument("--until-idle", action="store_true",
                        help="stop once nothing is queued or running (default: run until SIGTERM)")
    _execution_settings(worker)
    worker.set_defaults(handler=worker_command)
