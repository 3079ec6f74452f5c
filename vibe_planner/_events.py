"""Typed progress events of a run, for `MetaPlanner(progress_callback=...)` and `MetaPlanner.events`.

Every event carries the plan id, the seconds since the run started, and the counts at the
moment it happened, so a display can redraw from any single event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "CheckpointWritten",
    "NodeCompleted",
    "NodeFailed",
    "NodeRetrying",
    "NodeSkipped",
    "NodeStarted",
    "PlanCreated",
    "ProgressEvent",
    "RunFinished",
]


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
class CheckpointWritten(ProgressEvent):
    """A checkpoint is durable on disk."""

    kind: ClassVar[str] = "checkpoint_written"
    checkpoint_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(ProgressEvent):
    """The run ended (completed, failed or cancelled)."""

    kind: ClassVar[str] = "run_finished"
    status: str
    duration: float
