"""Progress of a run: a live display on a terminal, one line per event elsewhere.

Both displays are fed the run's `ProgressEvent`s by `watch`, which subscribes to the planner
for the duration of one call. Events carry the counts at the moment they happened, so a
display redraws from any single event and a dropped event costs nothing but a line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from vibe_planner import (
    CheckpointWritten,
    MetaPlanner,
    NodeAnswered,
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    NodeWaiting,
    PlanCreated,
    ProgressEvent,
    RunFinished,
)

__all__ = ["Display", "LiveDisplay", "PlainDisplay", "describe", "open_display", "watch"]

T = TypeVar("T")

_BUFFER = 4096
"""Events waiting for the display before newer ones are dropped (the run never waits)."""


class Display(Protocol):
    """Something that shows progress events."""

    def show(self, event: ProgressEvent) -> None:
        """Show one event."""


class NullDisplay:
    """Shows nothing (``--json`` mode)."""

    def show(self, event: ProgressEvent) -> None:
        """Ignore *event*."""


class PlainDisplay:
    """One line per event, flushed at once, for pipes, files and CI logs."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def show(self, event: ProgressEvent) -> None:
        """Print *event* as ``[  0.12s] node outline completed (5/11)``."""
        self._console.print(f"[{event.elapsed:6.2f}s] {describe(event)}")
        self._console.file.flush()


class _RunProgress(Progress):
    """A progress bar with a second line for the last checkpoint (rich's documented extension)."""

    checkpoint = "none yet"

    def get_renderables(self) -> Iterable[RenderableType]:
        """Yield the bar, then the checkpoint line."""
        yield self.make_tasks_table(self.tasks)
        yield Text(f"last checkpoint: {self.checkpoint}", style="dim")


class LiveDisplay:
    """A progress bar with counts and elapsed time, and the last checkpoint, redrawn in place.

    Plan, failure and retry events are also printed above the bar, so they stay on screen
    when the bar goes away at the end of the run.
    """

    def __init__(self, progress: _RunProgress) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("planning", total=None, running=0, failed=0)

    def show(self, event: ProgressEvent) -> None:
        """Update the bar from *event*'s counts; print the events worth keeping."""
        status = "running" if isinstance(event, PlanCreated) else None
        if isinstance(event, RunFinished):
            status = event.status
        if isinstance(event, CheckpointWritten):
            self._progress.checkpoint = f"{event.checkpoint_id} ({event.reason})"
        self._progress.update(self._task, total=event.total, completed=event.completed,
                              description=status, running=event.running, failed=event.failed)
        if isinstance(event, PlanCreated | NodeFailed | NodeRetrying | NodeSkipped | NodeWaiting):
            style = "red" if isinstance(event, NodeFailed | NodeSkipped) else "yellow"
            self._progress.console.print(Text(describe(event), style=style))


def describe(event: ProgressEvent) -> str:
    """Return one line saying what *event* means."""
    counts = f"({event.completed}/{event.total})"
    if isinstance(event, PlanCreated):
        if event.resumed_from is not None:
            return (f"plan {event.plan_id}: {event.total} nodes, resumed from "
                    f"{event.resumed_from} with {event.completed} completed")
        offline = " (offline: no LLM configured)" if event.offline else ""
        return f"plan {event.plan_id}: {event.total} nodes, planned by {event.planner}{offline}"
    if isinstance(event, NodeStarted):
        again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
        return f"node {event.node_id} started{again}"
    if isinstance(event, NodeCompleted):
        return f"node {event.node_id} completed {counts}"
    if isinstance(event, NodeRetrying):
        return (f"node {event.node_id} attempt {event.attempt} failed, retrying in "
                f"{event.delay:.2f}s: {event.error}")
    if isinstance(event, NodeFailed):
        return f"node {event.node_id} FAILED: {event.error}"
    if isinstance(event, NodeSkipped):
        return f"node {event.node_id} skipped: dependency {event.because_of} failed"
    if isinstance(event, NodeWaiting):
        return f"node {event.node_id} waiting for an answer to {event.request_id}: {event.prompt}"
    if isinstance(event, NodeAnswered):
        return f"node {event.node_id} answered ({event.request_id}), running again"
    if isinstance(event, CheckpointWritten):
        return (f"checkpoint {event.checkpoint_id} written "
                f"({event.reason}, {event.completed}/{event.total})")
    if isinstance(event, RunFinished):
        return f"run {event.status} in {event.duration:.2f}s {counts}"
    return f"{event.kind} {counts}"


@contextlib.contextmanager
def open_display(console: Console, *, quiet: bool) -> Iterator[Display]:
    """Yield the display fitting *console*: live on a terminal, plain lines otherwise."""
    if quiet:
        yield NullDisplay()
    elif not console.is_interactive:
        yield PlainDisplay(console)
    else:
        progress = _RunProgress(
            SpinnerColumn(), TextColumn("{task.description:<9}"), BarColumn(bar_width=24),
            MofNCompleteColumn(), TextColumn("running {task.fields[running]}, failed "
                                             "{task.fields[failed]}"),
            TimeElapsedColumn(), console=console, refresh_per_second=10,
            transient=True,  # the summary that follows says the same, for good
        )
        with progress:
            yield LiveDisplay(progress)


async def watch(planner: MetaPlanner, display: Display, call: Callable[[], Awaitable[T]]) -> T:
    """Await *call* while *display* shows the progress events of the runs it starts.

    Every event emitted before *call* returns is shown before `watch` returns: the display
    reads its own clone of the subscription, which ends once the subscription closes and the
    events already queued are drained. An error of *call* is raised as itself, not wrapped
    in the task group's exception group.
    """
    try:
        async with anyio.create_task_group() as tg, planner.subscribe(buffer=_BUFFER) as events:
            tg.start_soon(_forward, events.clone(), display)
            result = await call()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
    return result


async def _forward(events: MemoryObjectReceiveStream[ProgressEvent], display: Display) -> None:
    with events:
        async for event in events:
            display.show(event)
