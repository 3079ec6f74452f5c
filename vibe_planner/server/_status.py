"""`LivePlan`: what the service knows of a plan it runs (or ran lately), and status rules.

A plan's status is one of:

=============  ==================================================================================
queued         submitted; waiting for a free slot (``max_running``)
running        planning or running now, in this service
completed      every node completed
failed         the run ended with failed nodes, or could not start (the error says why)
cancelled      cancelled (``POST /v1/plans/{id}/cancel``, or the server stopped)
waiting        waiting for a person's answer (human-in-the-loop)
interrupted    its newest checkpoint is of a run that did not end (its process died): resume it
corrupt        its newest checkpoint cannot be read
=============  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from vibe_planner import ExecutionResult, Vibe, WorkflowPlan

from ._events import EventLog

__all__ = ["LivePlan", "checkpoint_status"]


class LivePlan:
    """The in-memory record of one plan the service runs or ran lately."""

    def __init__(self, plan_id: str, vibe: Vibe, log: EventLog, *, fresh: bool) -> None:
        self.plan_id = plan_id
        self.vibe = vibe
        self.log = log
        self.fresh = fresh
        self.status = "queued"
        self.error: dict[str, str] | None = None
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self.stopping = False
        """Cancelled because the service stops (its marker stays: the next start resumes it)."""
        self.nodes: dict[str, str] = {}
        """Node statuses seen in this run's events."""
        self.progress = {"total": 0, "completed": 0, "running": 0, "failed": 0}
        self.checkpoints: list[str] = []
        """Ids of the checkpoints this run wrote, oldest first."""
        self.usage: dict[str, int] | None = None
        self.submitted_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        self.plan: WorkflowPlan | None = None
        """The DAG, once read from a checkpoint (cached: a run's DAG does not change)."""
        self.pending: dict[str, dict[str, Any]] = {}
        """Requests for a person's input this run made and that are not answered yet (events)."""
        self.restored: set[str] = set()
        """Nodes completed before this run started (from the checkpoint it resumed)."""

    @property
    def active(self) -> bool:
        """Whether the run is queued or going on."""
        return not self.finished.is_set()

    def fail(self, exc: BaseException, scrub: Callable[[str], str]) -> None:
        """Record that the run could not go on: *exc*'s type and (scrubbed) message."""
        self.status = "failed"
        self.error = {"type": type(exc).__name__, "message": scrub(str(exc))}
        self.finished_at = datetime.now(UTC)

    def finish(self, result: ExecutionResult) -> None:
        """Record the *result* the run returned."""
        self.status = result.status
        self.usage = result.usage.model_dump()
        self.nodes = {node_id: str(r.status) for node_id, r in result.node_results.items()}
        self.plan = result.plan
        self.pending = {r.id: r.model_dump(mode="json") for r in result.pending_requests}
        counts = [str(r.status) for r in result.node_results.values()]
        self.progress = {"total": len(result.plan.nodes), "completed": counts.count("completed"),
                         "running": 0, "failed": counts.count("failed")}
        self.finished_at = datetime.now(UTC)

    def node_statuses(self) -> dict[str, str]:
        """Each node's status: restored ones completed, then what this run's events said."""
        assert self.plan is not None
        statuses = {node.id: "pending" for node in self.plan.nodes}
        statuses.update(dict.fromkeys(self.restored, "completed"))
        statuses.update(self.nodes)
        return statuses

    def summary(self) -> dict[str, Any]:
        """Return the fields of the plan in a listing."""
        return {"plan_id": self.plan_id, "status": self.status, "description": _clip(self.vibe.description),
                "progress": dict(self.progress), "updated_at": self.finished_at or self.submitted_at,
                "live": True}


def checkpoint_status(reason: str | None, completed: int, total: int, error: str | None = None) -> str:
    """Return the status of a plan that is not live, from its newest checkpoint."""
    if error is not None:
        return "corrupt"
    if reason == "final":
        return "completed" if completed == total else "failed"
    if reason in ("cancelled", "waiting"):
        return reason
    return "interrupted"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
