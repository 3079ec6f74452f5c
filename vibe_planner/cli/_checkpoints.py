"""The ``checkpoints`` commands: list, show, delete, prune and verify saved checkpoints.

They use `WorkflowPersistenceManager` directly: none of them runs or locks a plan, and only
``delete`` and ``prune`` modify anything.
"""

from __future__ import annotations

import argparse
import sys

import anyio
import orjson
from rich import box
from rich.table import Table
from rich.text import Text

from vibe_planner import Checkpoint, CheckpointInfo, InputRequest

from ._commands import EXIT_CORRUPT, EXIT_OK, persistence_manager
from ._render import format_size, format_time, make_console

__all__ = ["delete_command", "list_command", "prune_command", "show_command", "verify_command"]


def list_command(args: argparse.Namespace) -> int:
    """``checkpoints list [PLAN_ID]``: a table of checkpoints, newest first (damaged ones too)."""
    manager = persistence_manager(args)
    infos = anyio.run(manager.list_checkpoints, args.plan_id)
    console = make_console(sys.stdout)
    if not infos:
        scope = f"for plan {args.plan_id} " if args.plan_id else ""
        console.print(f"no checkpoints {scope}in {args.checkpoint_dir}")
        return EXIT_OK
    console.print(_table(infos))
    return EXIT_OK


def show_command(args: argparse.Namespace) -> int:
    """``checkpoints show ID``: a checkpoint's summary, or with ``--json`` the whole document."""
    manager = persistence_manager(args)
    checkpoint = anyio.run(manager.get_checkpoint, args.checkpoint_id)
    if args.json:
        sys.stdout.write(checkpoint.model_dump_json(indent=2) + "\n")
        return EXIT_OK
    infos = anyio.run(manager.list_checkpoints, checkpoint.plan_id)
    path = next((i.path for i in infos if i.checkpoint_id == checkpoint.checkpoint_id), "-")
    make_console(sys.stdout).print(_details(checkpoint, path))
    return EXIT_OK


def delete_command(args: argparse.Namespace) -> int:
    """``checkpoints delete ID``: delete one checkpoint file."""
    manager = persistence_manager(args)
    anyio.run(manager.delete_checkpoint, args.checkpoint_id)
    print(f"deleted checkpoint {args.checkpoint_id}")
    return EXIT_OK


def prune_command(args: argparse.Namespace) -> int:
    """``checkpoints prune PLAN_ID --keep-last K``: delete all but a plan's newest K checkpoints."""
    manager = persistence_manager(args)
    deleted = anyio.run(manager.prune, args.plan_id, args.keep_last)
    for checkpoint_id in deleted:
        print(f"deleted checkpoint {checkpoint_id}")
    kept = len(anyio.run(manager.list_checkpoints, args.plan_id))
    needed = f" and {kept - args.keep_last} older one(s) their chains need" if kept > args.keep_last else ""
    print(f"plan {args.plan_id}: deleted {len(deleted)} checkpoint(s), "
          f"kept the newest {args.keep_last}{needed}")
    return EXIT_OK


def verify_command(args: argparse.Namespace) -> int:
    """``checkpoints verify [PLAN_ID]``: check every checkpoint and journal; change nothing.

    Prints one line per damaged file and exits with `EXIT_CORRUPT` if there is any.
    """
    manager = persistence_manager(args)
    problems = anyio.run(manager.verify, args.plan_id)
    scope = f"plan {args.plan_id} in {args.checkpoint_dir}" if args.plan_id else args.checkpoint_dir
    for problem in problems:
        print(f"CORRUPT {problem.path}: {problem.reason}")
    if problems:
        print(f"vibe-planner: error: {len(problems)} damaged file(s) in {scope}; "
              "nothing was changed", file=sys.stderr)
        return EXIT_CORRUPT
    count = len(anyio.run(manager.list_checkpoints, args.plan_id))
    print(f"ok: {count} checkpoint(s) in {scope} verified, no damaged files")
    return EXIT_OK


def _table(infos: list[CheckpointInfo]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("ID", "PLAN", "CREATED", "REASON", "PROGRESS"):
        table.add_column(column, no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    waiting = any(info.waiting_for for info in infos)
    if waiting:
        table.add_column("WAITING FOR", no_wrap=True)
    for info in infos:
        if info.error is not None:
            reason = Text(f"CORRUPT: {info.error}", style="red")
            progress = "-"
        else:
            reason = Text(info.reason or "-")
            progress = f"{info.completed_nodes}/{info.total_nodes}"
        cells: list[str | Text] = [info.checkpoint_id, info.plan_id, format_time(info.created_at), reason,
                 progress, format_size(info.size_bytes)]
        if waiting:
            cells.append(", ".join(info.waiting_for) or "-")
        table.add_row(*cells)
    return table


def _details(checkpoint: Checkpoint, path: str) -> Text:
    vibe = checkpoint.vibe
    rows: list[tuple[str, str]] = [
        ("checkpoint", checkpoint.checkpoint_id),
        ("plan", checkpoint.plan_id),
        ("file", path),
        ("created", format_time(checkpoint.created_at)),
        ("reason", checkpoint.reason),
        ("sequence", str(checkpoint.sequence)),
        ("stored as", "a base (the whole state)" if checkpoint.base is None
         else f"a delta of base {checkpoint.base} (shown whole)"),
        ("run", checkpoint.run_id),
        ("vibe", _clip(vibe.description)),
        ("style", _clip(vibe.style or "-")),
        ("constraints", "; ".join(_clip(c) for c in vibe.constraints) or "-"),
        ("planner", checkpoint.workflow_plan.planner),
        ("progress", f"{len(checkpoint.completed_nodes)}/{len(checkpoint.workflow_plan.nodes)} "
                     f"completed, {len(checkpoint.failed_nodes)} failed, "
                     f"{len(checkpoint.pending_nodes)} pending"),
        ("completed", ", ".join(checkpoint.completed_nodes) or "-"),
        ("pending", ", ".join(checkpoint.pending_nodes) or "-"),
        *[("failed", _failure(checkpoint, node_id)) for node_id in checkpoint.failed_nodes],
        ("tokens", f"{checkpoint.usage.total_tokens} in {checkpoint.usage.requests} requests"),
        *[("waiting for", _request(r)) for r in checkpoint.pending_requests],
        *[(r.status, _request(r)) for r in checkpoint.input_requests if r.status != "pending"],
    ]
    text = Text()
    for key, value in rows:
        text.append(f"{key:<13}", style="bold")
        style = {"failed": "red", "waiting for": "yellow"}.get(key, "")
        text.append(f"{value}\n", style=style)
    text.rstrip()
    return text


def _request(request: InputRequest) -> str:
    text = f"{request.id}: {_clip(request.prompt)}"
    if request.status == "pending":
        schema = orjson.dumps(request.json_schema).decode() if request.json_schema else "any JSON"
        text += f" (answer: {_clip(schema)}; asked {format_time(request.asked_at)}"
        if request.deadline is not None:
            text += f", expires {format_time(request.deadline)}"
        return text + ")"
    return text + f" -> {_clip(orjson.dumps(request.answer).decode())} at {format_time(request.answered_at)}"


def _failure(checkpoint: Checkpoint, node_id: str) -> str:
    result = checkpoint.node_results.get(node_id)
    error = result.error if result is not None else None
    reason = f"{error.type}: {error.message}" if error is not None else "failed"
    return f"{node_id}: {reason}"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

