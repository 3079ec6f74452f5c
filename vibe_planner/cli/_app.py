"""Parse the command line, dispatch to a command, and turn errors into exit codes.

Exit codes (see ``docs/cli.md``):

====  =========================================================================================
0     done (``run``/``resume``: every node completed)
1     the run ended with failed nodes; or any other error (`PlanningError`, disk errors, ...)
2     usage: bad arguments, `InvalidVibeError`, `InvalidIdentifierError`,
      `PlanValidationError`, `CheckpointNotFoundError`, `CheckpointMismatchError`,
      `InputRequestError` (an answer that cannot be taken: nothing was recorded)
3     a damaged checkpoint or journal file (`CheckpointCorruptError`, ``checkpoints verify``),
      or an unsafe one (`UnsafeCheckpointFolderError`: another user's, or group/other-writable)
4     another process is running the plan (`PlanLockedError`)
5     ``run``/``resume``: the run waits for a person's answer (``respond``/``approve``/``reject``)
130   interrupted (Ctrl-C); ``run``/``resume`` first write a ``cancelled`` checkpoint
====  =========================================================================================

Errors are one line on stderr, ``vibe-planner: error: ...``; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import vibe_planner
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    InputRequestError,
    InvalidIdentifierError,
    InvalidVibeError,
    PlanLockedError,
    PlanValidationError,
    UnsafeCheckpointFolderError,
    VibePlannerError,
)

from . import _checkpoints, _commands, _respond, _serve, _workers
from ._commands import (
    EXIT_CORRUPT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_USAGE,
    UsageError,
)
from ._render import DEFAULT_CHECKPOINT_DIR

__all__ = ["build_parser", "exit_code", "main"]

_USAGE_ERRORS = (
    UsageError, InvalidVibeError, InvalidIdentifierError, PlanValidationError,
    CheckpointNotFoundError, CheckpointMismatchError, InputRequestError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vibe-planner`` command line and return its exit code."""
    args = build_parser().parse_args(argv)
    args.checkpoint_dir = getattr(args, "checkpoint_dir", DEFAULT_CHECKPOINT_DIR)
    args.store = getattr(args, "store", None) or os.environ.get(_workers.STORE_ENV) or None
    args.lease_ttl = getattr(args, "lease_ttl", None)
    args.debug = getattr(args, "debug", False)
    _configure_logging(args.debug)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("vibe-planner: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``); stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        return _report(exc, debug=args.debug)


def exit_code(exc: BaseException) -> int:
    """Return the exit code for an error that ended a command."""
    if isinstance(exc, CheckpointCorruptError | UnsafeCheckpointFolderError):
        return EXIT_CORRUPT
    if isinstance(exc, PlanLockedError):
        return EXIT_LOCKED
    if isinstance(exc, _USAGE_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILED


def _report(exc: Exception, *, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, VibePlannerError | UsageError | OSError):
        message = str(exc)
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
        if not debug:
            message += " (run with --debug to see the traceback)"
    print("vibe-planner: error: " + " ".join(message.splitlines()), file=sys.stderr)
    return exit_code(exc)


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("vibe_planner")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vibe-planner: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


# -- parsing -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        """Print ``vibe-planner: error: ...`` on stderr and exit with `EXIT_USAGE`."""
        self.exit(EXIT_USAGE, f"vibe-planner: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole command line."""
    common = _global_options()
    parser = _Parser(prog="vibe-planner", parents=[common],
                     description="Plan a vibe into a DAG, run it with checkpoints, resume it.")
    parser.add_argument("--version", action="version",
                        version=f"vibe-planner {vibe_planner.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    run = commands.add_parser("run", parents=[common], help="plan and run a vibe (resuming it)")
    _vibe_options(run)
    run.add_argument("--plan-id", metavar="ID", help="plan id (default: derived from the vibe)")
    _execution_options(run)
    run.set_defaults(handler=_commands.run_command)

    resume = commands.add_parser("resume", parents=[common], help="resume a plan by id")
    resume.add_argument("plan_id", metavar="PLAN_ID")
    resume.add_argument("--checkpoint", metavar="ID", help="resume from this checkpoint "
                        "(default: the latest)")
    _execution_options(resume)
    resume.set_defaults(handler=_commands.resume_run_command)

    plan = commands.add_parser("plan", parents=[common],
                               help="print a vibe's plan without running it")
    _vibe_options(plan)
    plan.add_argument("--plan-id", metavar="ID", help="plan id (default: derived from the vibe)")
    plan.add_argument("--format", choices=["tree", "mermaid", "json"], default="tree",
                      help="output format (default: tree)")
    plan.set_defaults(handler=_commands.plan_command)

    serve = commands.add_parser("serve", parents=[common], help="serve the HTTP API and the dashboard")
    _serve.add_serve_options(serve, run_options=_execution_options)
    serve.set_defaults(handler=_serve.serve_command)

    _respond.add_respond_commands(commands, common)
    _checkpoint_commands(commands.add_parser(
        "checkpoints", parents=[common], help="list, show, delete, prune or verify checkpoints"))
    _workers.add_commands(commands, common)
    return parser


def _global_options() -> _Parser:
    # Defaults are SUPPRESS so a subcommand's parser does not overwrite a value given before
    # the subcommand name; `main` fills them in.
    common = _Parser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument("--checkpoint-dir", metavar="DIR", default=argparse.SUPPRESS,
                       help=f"checkpoint folder (default: {DEFAULT_CHECKPOINT_DIR})")
    group.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                       help="where checkpoints live instead: a folder, memory:, or postgresql://... "
                       f"(default: ${_workers.STORE_ENV}, else --checkpoint-dir)")
    group.add_argument("--lease-ttl", metavar="SECONDS", type=_positive_float, default=argparse.SUPPRESS,
                       help="PostgreSQL stores: seconds a run's lease lasts unless renewed (default: 30)")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and debug logs")
    return common


def _vibe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vibe", metavar="VIBE", help="what you want, in plain words")
    parser.add_argument("--style", metavar="S", help="how it should feel (tone, voice, format)")
    parser.add_argument("--constraint", metavar="C", action="append",
                        help="a hard requirement (repeat for several)")


def _execution_options(parser: argparse.ArgumentParser) -> None:
    _execution_settings(parser)
    parser.add_argument("--concurrency", metavar="K", type=_positive_int, default=16,
                        help="most nodes running at once (default: 16)")
    parser.add_argument("--json", action="store_true",
                        help="print only the result, as JSON (no progress display)")


def _execution_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-interval", metavar="N", type=_positive_int, default=5,
                        help="write a checkpoint every N finished nodes (default: 5)")
    parser.add_argument("--node-timeout", metavar="SECONDS", type=_positive_float,
                        help="seconds one node attempt may take (default: 300)")
    parser.add_argument("--max-attempts", metavar="N", type=_positive_int,
                        help="attempts per node before it fails (default: 3)")


def _checkpoint_commands(parser: argparse.ArgumentParser) -> None:
    common = _global_options()
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", parents=[common], help="list checkpoints, newest first")
    listing.add_argument("plan_id", metavar="PLAN_ID", nargs="?", help="only this plan's")
    listing.set_defaults(handler=_checkpoints.list_command)
    show = commands.add_parser("show", parents=[common], help="show one checkpoint")
    show.add_argument("checkpoint_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the whole checkpoint document")
    show.set_defaults(handler=_checkpoints.show_command)
    delete = commands.add_parser("delete", parents=[common], help="delete one checkpoint")
    delete.add_argument("checkpoint_id", metavar="ID")
    delete.set_defaults(handler=_checkpoints.delete_command)
    prune = commands.add_parser("prune", parents=[common],
                                help="keep only a plan's newest checkpoints")
    prune.add_argument("plan_id", metavar="PLAN_ID")
    prune.add_argument("--keep-last", metavar="K", type=_positive_int, required=True,
                       help="how many of the newest checkpoints to keep")
    prune.set_defaults(handler=_checkpoints.prune_command)
    verify = commands.add_parser("verify", parents=[common],
                                 help="check every checkpoint and journal file; change nothing")
    verify.add_argument("plan_id", metavar="PLAN_ID", nargs="?", help="only this plan's")
    verify.set_defaults(handler=_checkpoints.verify_command)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value
