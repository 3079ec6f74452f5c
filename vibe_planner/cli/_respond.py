"""The ``respond``, ``approve`` and ``reject`` commands: answer a node's request for input.

Each records one answer (`MetaPlanner.respond`: validated against the request's schema,
written atomically as an ``answered`` checkpoint) and says what the plan still waits for;
with ``--resume`` the plan then continues in the same command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import orjson

from vibe_planner import InputRequest, MetaPlanner

from ._commands import EXIT_OK, UsageError, build_planner, execute
from ._render import make_console, resume_command

__all__ = ["add_respond_commands", "approve_command", "reject_command", "respond_command"]


def add_respond_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``respond``, ``approve`` and ``reject`` to the command line's subcommands."""
    respond = commands.add_parser("respond", parents=[common],
                                  help="answer a plan's pending request with a JSON value")
    _targets(respond)
    respond.add_argument("--value", metavar="JSON", required=True,
                         help='the answer, as JSON (e.g. \'{"approved": true}\' or \'"yes"\')')
    respond.set_defaults(handler=respond_command)
    for name, verb in (("approve", "approve"), ("reject", "reject")):
        parser = commands.add_parser(name, parents=[common],
                                     help=f"{verb} a pending approval request")
        _targets(parser)
        parser.add_argument("--comment", metavar="TEXT", help="a note kept with the answer")
        parser.set_defaults(handler=approve_command if name == "approve" else reject_command)


def _targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan_id", metavar="PLAN_ID", help="the plan that waits")
    parser.add_argument("request_id", metavar="REQUEST_ID",
                        help="the request to answer (listed by the run and by 'checkpoints show')")
    parser.add_argument("--resume", action="store_true",
                        help="then resume the plan at once (else: 'vibe-planner resume PLAN_ID')")
    parser.add_argument("--json", action="store_true",
                        help="print the answered request (and with --resume the result) as JSON")


def respond_command(args: argparse.Namespace) -> int:
    """``vibe-planner respond PLAN_ID REQUEST_ID --value JSON``."""
    try:
        value = orjson.loads(args.value)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--value is not JSON ({exc}); quote strings: --value '\"yes\"'") from None
    return _answer(args, value)


def approve_command(args: argparse.Namespace) -> int:
    """``vibe-planner approve PLAN_ID REQUEST_ID``: answer ``{"approved": true}``."""
    return _answer(args, _approval(True, args.comment))


def reject_command(args: argparse.Namespace) -> int:
    """``vibe-planner reject PLAN_ID REQUEST_ID``: answer ``{"approved": false}``."""
    return _answer(args, _approval(False, args.comment))


def _approval(approved: bool, comment: str | None) -> dict[str, Any]:
    return {"approved": approved} if comment is None else {"approved": approved, "comment": comment}


def _answer(args: argparse.Namespace, value: Any) -> int:
    planner = build_planner(args)
    request = anyio.run(planner.arespond, args.plan_id, args.request_id, value)
    if args.json and not args.resume:
        sys.stdout.write(request.model_dump_json() + "\n")
    elif not args.json:
        _report(planner, request, args)
    if args.resume:
        return execute(args, planner, args.plan_id, lambda: planner.resume(args.plan_id))
    return EXIT_OK


def _report(planner: MetaPlanner, request: InputRequest, args: argparse.Namespace) -> None:
    console = make_console(sys.stdout)
    console.print(f"recorded the answer to {request.id} (node {request.node_id}) of plan "
                  f"{args.plan_id}: {orjson.dumps(request.answer).decode()}")
    if not args.resume:
        console.print(f"continue with: {resume_command(args.plan_id, args.checkpoint_dir)}")
