"""Typed progress events of a run, for `MetaPlanner(progress_callback=...)` and `MetaPlanner.subscribe`.

Every event carries the plan id, the seconds since the run started, and the counts at the
moment it happened, so a display can redraw from any single event.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "CheckpointWritten",
    "EventBus",
    "NodeAnswered",
    "NodeCompleted",
    "NodeFailed",
    "NodeRetrying",
    "NodeSkipped",
    "NodeStarted",
    "NodeWaiting",
    "PlanCreated",
    "ProgressEvent",
    "RunFinished",
]

logger = logging.getLogger("vibe_planner")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent:
    """Base of all progress events."""

    kind: ClassVar[str] = "event"
    plan_id: str
    elapsed: float
    """Seconds since the run started."""
    total: int
    """Nodes in the plan."""
    completed: int
    """Nodes completed so far (restored ones included)."""
    running: int
    failed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCreated(ProgressEvent):
    """The plan is ready (made now, or restored from a checkpoint)."""

    kind: ClassVar[str] = "plan_created"
    planner: str
    resumed_from: str | None
    offline: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStarted(ProgressEvent):
    """A node's attempt started."""

    kind: ClassVar[str] = "node_started"
    node_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCompleted(ProgressEvent):
    """A node completed."""

    kind: ClassVar[str] = "node_completed"
    node_id: str
    duration: float
    """Seconds from its first attempt's start to completion."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRetrying(ProgressEvent):
    """A node's attempt failed and it will be tried again after *delay* seconds."""

    kind: ClassVar[str] = "node_retrying"
    node_id: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFailed(ProgressEvent):
    """A node failed for good."""

    kind: ClassVar[str] = "node_failed"
    node_id: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSkipped(ProgressEvent):
    """A node will not run because a dependency failed."""

    kind: ClassVar[str] = "node_skipped"
    node_id: str
    because_of: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeWaiting(ProgressEvent):
    """A node asked a person for input and waits for the answer (other branches go on)."""

    kind: ClassVar[str] = "waiting"
    node_id: str
    request_id: str
    """What to answer with `MetaPlanner.respond`."""
    prompt: str
    deadline: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAnswered(ProgressEvent):
    """A waiting node's answer came: it runs again, and its `request_input` returns the answer."""

    kind: ClassVar[str] = "answered"
    node_id: str
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWritten(ProgressEvent):
    """A checkpoint is durable on disk."""

    kind: ClassVar[str] = "checkpoint_written"
    checkpoint_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(ProgressEvent):
    """The run ended (completed, failed, cancelled, or waiting for a person's answer)."""

    kind: ClassVar[str] = "run_finished"
    status: str
    duration: float


class EventBus:
    """Delivers a run's events to a callback and to subscribers without ever blocking the run.

    `emit` is synchronous and never waits: events go into bounded buffers, and when a buffer
    is full (a slow consumer) the event is dropped and counted instead. The callback runs in a
    task of its own (`deliver`); its exceptions are logged, never raised into the run.
    """

    def __init__(
        self,
        callback: Callable[[ProgressEvent], Any] | None,
        subscribers: list[MemoryObjectSendStream[ProgressEvent]],
        buffer: int = 1024,
    ) -> None:
        self._callback = callback
        self._subscribers = subscribers
        self._send: MemoryObjectSendStream[ProgressEvent] | None = None
        self._receive: MemoryObjectReceiveStream[ProgressEvent] | None = None
        if callback is not None:
            self._send, self._receive = anyio.create_memory_object_stream[ProgressEvent](buffer)
        self.dropped = 0
        self._scope = anyio.CancelScope()

    @property
    def active(self) -> bool:
        """Whether anyone listens (if not, the scheduler skips building events)."""
        return self._callback is not None or bool(self._subscribers)

    def emit(self, event: ProgressEvent) -> None:
        """Queue *event* for every listener; drop it for listeners that are behind."""
        streams = [self._send] if self._send is not None else []
        for stream in [*streams, *self._subscribers]:
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                self.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                if stream in self._subscribers:
                    self._subscribers.remove(stream)

    async def deliver(self) -> None:
        """Call the callback for each queued event until `close` (then drain what is left)."""
        if self._receive is None or self._callback is None:
            return
        with self._scope, self._receive:
            async for event in self._receive:
                try:
                    outcome = self._callback(event)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    logger.exception("progress callback failed on %s (ignored)", event.kind)

    def close(self, grace: float = 1.0) -> None:
        """Stop accepting events; `deliver` drains the buffer for at most *grace* seconds."""
        if self._send is not None:
            self._send.close()
            self._scope.deadline = anyio.current_time() + grace
        if self.dropped:
            logger.warning("%d progress events dropped for slow listeners", self.dropped)
