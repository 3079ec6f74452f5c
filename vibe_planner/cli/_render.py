"""What the command line prints: run summaries and plans (tree, Mermaid, JSON).

Everything is printed through a `rich` console created by `make_console`, with markup off:
node outputs and vibes are user text, and ``[offline:brief]`` must not be read as a style.
"""

from __future__ import annotations

import errno
import json
import shlex
from datetime import datetime
from typing import IO

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from vibe_planner import ExecutionResult, NodeStatus, WorkflowPlan

__all__ = [
    "format_size",
    "format_time",
    "make_console",
    "print_plan",
    "print_summary",
    "resume_command",
]

DEFAULT_CHECKPOINT_DIR = ".vibe_checkpoints"
"""Where checkpoints go unless ``--checkpoint-dir`` says otherwise."""

_PIPE_WIDTH = 10_000
"""Console width when not writing to a terminal: lines are never wrapped in files and pipes."""


class _Console(Console):
    """A console that reports a closed pipe as `BrokenPipeError`.

    Rich's default raises `SystemExit`, which would tear through the event loop from inside
    the display task; an ordinary error lets the run be cancelled (and checkpointed) first.
    """

    def on_broken_pipe(self) -> None:
        """Stop writing, and raise `BrokenPipeError` for `vibe_planner.cli._app.main`."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the output was closed")


def make_console(stream: IO[str]) -> Console:
    """Return a console for *stream*: colours and live display on a terminal, else plain text."""
    is_tty = stream.isatty()
    return _Console(
        file=stream, markup=False, highlight=False, emoji=False,
        width=None if is_tty else _PIPE_WIDTH, force_terminal=None if is_tty else False,
    )


def resume_command(plan_id: str, checkpoint_dir: str) -> str:
    """Return the command that resumes *plan_id* (with ``--checkpoint-dir`` if not the default)."""
    command = f"vibe-planner resume {plan_id}"
    if checkpoint_dir != DEFAULT_CHECKPOINT_DIR:
        command += f" --checkpoint-dir {shlex.quote(checkpoint_dir)}"
    return command


def format_time(moment: datetime | None) -> str:
    """Return *moment* in local time to the second, or ``-``."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_size(size: int) -> str:
    """Return a byte count for humans: ``812 B``, ``3.4 kB``, ``1.2 MB``."""
    if size < 1000:
        return f"{size} B"
    if size < 1_000_000:
        return f"{size / 1000:.1f} kB"
    return f"{size / 1_000_000:.1f} MB"


# -- run summary ---------------------------------------------------------------------------------
def print_summary(console: Console, result: ExecutionResult, checkpoint_dir: str) -> None:
    """Print what a run did: status, counts, offline note, failures and the final outputs."""
    console.print(_headline(result))
    if result.offline:
        console.print(Text("ran offline: no LLM configured (node outputs are placeholders)",
                           style="yellow"))
    if result.resumed_from is not None:
        console.print(f"resumed from checkpoint {result.resumed_from} "
                      f"({result.nodes_restored} nodes restored, not run again)")
    if result.checkpoints_written:
        console.print(f"checkpoints written: {len(result.checkpoints_written)}, "
                      f"last {result.checkpoints_written[-1]}")
    if result.usage.total_tokens:
        console.print(f"tokens: {result.usage.total_tokens} in {result.usage.requests} requests")
    if result.status == "failed":
        _print_failures(console, result, checkpoint_dir)
    if result.pending_requests:
        _print_waiting(console, result, checkpoint_dir)
    _print_outputs(console, result)


def _headline(result: ExecutionResult) -> Text:
    total = len(result.plan.nodes)
    done = sum(1 for r in result.node_results.values() if r.status == NodeStatus.COMPLETED)
    style = {"completed": "bold green", "failed": "bold red"}.get(result.status, "bold yellow")
    text = Text(result.status, style=style)
    text.append(f": plan {result.plan_id}, {done}/{total} nodes completed "
                f"({result.nodes_run} run now, {result.nodes_restored} restored) "
                f"in {result.duration_seconds:.2f}s")
    return text


def _print_failures(console: Console, result: ExecutionResult, checkpoint_dir: str) -> None:
    console.print(Text("failed nodes:", style="bold red"))
    for node_id in result.failed_nodes:
        error = result.node_results[node_id].error
        reason = f"{error.type}: {error.message}" if error is not None else "unknown error"
        console.print(f"  {node_id}: {reason}")
    skipped = [k for k, r in result.node_results.items() if r.status == NodeStatus.SKIPPED]
    if skipped:
        console.print(f"skipped (a dependency failed): {', '.join(skipped)}")
    console.print(f"retry the failed nodes with: {resume_command(result.plan_id, checkpoint_dir)}")


def _print_waiting(console: Console, result: ExecutionResult, checkpoint_dir: str) -> None:
    where = "" if checkpoint_dir == DEFAULT_CHECKPOINT_DIR \
        else f" --checkpoint-dir {shlex.quote(checkpoint_dir)}"
    console.print(Text("waiting for:", style="bold yellow"))
    for request in result.pending_requests:
        deadline = f" (expires {format_time(request.deadline)})" if request.deadline else ""
        console.print(f"  {request.id}: {request.prompt}{deadline}")
        if request.json_schema.get("required") == ["approved"]:
            console.print(f"    answer with: vibe-planner approve {result.plan_id} {request.id}{where}"
                          f"  (or: reject)")
        else:
            console.print(f"    answer with: vibe-planner respond {result.plan_id} {request.id}"
                          f"{where} --value JSON")
    console.print(f"then continue with: {resume_command(result.plan_id, checkpoint_dir)}")


def _print_outputs(console: Console, result: ExecutionResult) -> None:
    for node_id, output in result.outputs.items():
        console.print()
        console.print(Text(f"output of {node_id}:", style="bold"))
        for line in _as_text(output).splitlines() or [""]:
            console.print(Text("  " + line if line else ""))


def _as_text(output: object) -> str:
    """Return a text output as is, any other JSON value pretty-printed."""
    return output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False)


# -- plans ---------------------------------------------------------------------------------------
def print_plan(console: Console, plan: WorkflowPlan, fmt: str) -> None:
    """Print *plan* as a ``tree`` (sinks first), a Mermaid ``flowchart`` or its ``json``."""
    if fmt == "json":
        console.file.write(plan.model_dump_json(indent=2) + "\n")
    elif fmt == "mermaid":
        console.file.write(mermaid(plan))
    else:
        console.print(plan_tree(plan))


def mermaid(plan: WorkflowPlan) -> str:
    """Return a Mermaid flowchart of *plan*, dependencies pointing to their dependents."""
    names = {node_id: f"n{index}" for index, node_id in enumerate(plan.order)}
    lines = ["flowchart TD"]
    for node_id in plan.order:
        node = plan.node(node_id)
        label = node_id if node.kind == "llm" else f"{node_id} ({node.kind})"
        lines.append(f'    {names[node_id]}["{label.replace(chr(34), "#quot;")}"]')
    for node_id in plan.order:
        lines += [f"    {names[dep]} --> {names[node_id]}" for dep in plan.node(node_id).depends_on]
    return "\n".join(lines) + "\n"


def plan_tree(plan: WorkflowPlan) -> Tree:
    """Return *plan* as a tree: each deliverable (sink) with its dependencies below it.

    A node shared by several branches is expanded once; later mentions say ``(see above)``.
    """
    label = Text(f"plan {plan.plan_id}", style="bold")
    label.append(f" ({len(plan.nodes)} nodes, planner {plan.planner}): ")
    label.append(_shorten(plan.vibe.description))
    root = Tree(label)
    expanded: set[str] = set()
    for sink in plan.sinks():
        _add_branch(root, plan, sink, expanded)
    return root


def _add_branch(parent: Tree, plan: WorkflowPlan, node_id: str, expanded: set[str]) -> None:
    node = plan.node(node_id)
    label = Text(node_id, style="cyan")
    if node.kind != "llm":
        label.append(f" [{node.kind}]")
    if node_id in expanded:
        label.append(" (see above)", style="dim")
        parent.add(label)
        return
    expanded.add(node_id)
    if node.instructions:
        label.append(f": {_shorten(node.instructions)}", style="dim")
    branch = parent.add(label)
    for dep in node.depends_on:
        _add_branch(branch, plan, dep, expanded)


def _shorten(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

