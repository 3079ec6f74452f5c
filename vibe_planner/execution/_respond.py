"""Record an answer for a plan that is not running: one new checkpoint, written atomically.

The answer goes into a new ``answered`` snapshot of the plan, made (under the plan's lease)
from what a resume would start from: the latest checkpoint plus the journal records after it,
so nothing recorded is left behind. A snapshot is written atomically by every store, so after
a SIGKILL at any moment the answer is either recorded (the new snapshot is the latest) or not
(the old one still is), never half. The lease makes two answers to one request, from any
number of processes, take turns: the second finds the first and is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from .._exceptions import PlanNotWaitingError
from .._models import InputRequest, NodeStatus
from .._state import RunState
from ..persistence._manager import WorkflowPersistenceManager
from ..persistence._recorder import open_recorder
from ._input import take_answer

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["LiveRuns", "record_answer"]


@dataclass(eq=False)
class _Live:
    run: Run | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    """Set (and replaced) whenever `run` changes or the lease is released."""

    def notify(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()


class LiveRuns:
    """The plans one `MetaPlanner` holds the lease of, and their runs: where answers go first.

    An answer for a plan running here goes into the live run (which wakes the node at once);
    one for a plan whose lease is held without a run that takes answers (a run starting or
    finishing, a manual checkpoint) waits until the run takes answers or the lease is released,
    and is then recorded as a checkpoint.
    """

    def __init__(self) -> None:
        self._plans: dict[str, _Live] = {}

    @contextmanager
    def holding(self, plan_id: str) -> Iterator[None]:
        """Register the plan for the block (its lease is held meanwhile)."""
        entry = _Live()
        if self._plans.setdefault(plan_id, entry) is not entry:
            yield  # a second run of one plan (durability "none" takes no lease): not registered
            return
        try:
            yield
        finally:
            del self._plans[plan_id]
            entry.notify()

    def attach(self, plan_id: str, run: Run | None) -> None:
        """Say which run of the plan takes answers (``None``: none any more)."""
        entry = self._plans.get(plan_id)
        if entry is not None:
            entry.run = run
            entry.notify()

    async def answer(
        self, manager: WorkflowPersistenceManager | None, plan_id: str, request_id: str, value: Any,
        *, now: datetime,
    ) -> InputRequest:
        """Record an answer: into the live run, or else (once the lease is free) as a checkpoint."""
        entry = self._plans.get(plan_id)
        while entry is not None:
            if entry.run is not None and entry.run.accepting_answers:
                return await entry.run.answer(request_id, value)
            await entry.changed.wait()
            entry = self._plans.get(plan_id)
        if manager is None:
            raise PlanNotWaitingError(plan_id, request_id, "it is not running in this process, "
                                      'and with durability "none" nothing else records it')
        return await record_answer(manager, plan_id, request_id, value, now=now)


async def record_answer(
    manager: WorkflowPersistenceManager, plan_id: str, request_id: str, value: Any, *, now: datetime
) -> InputRequest:
    """Check and record an answer to a plan's pending request; return the answered request.

    Raises:
        PlanLockedError: The plan is running (in another process; answer there, or later).
        InputRequestError: The answer cannot be taken (see `take_answer`); nothing is written.
    """
    if not await manager.has_checkpoints(plan_id):  # before the lease makes a folder
        raise PlanNotWaitingError(plan_id, request_id, "it has no checkpoint")
    lease = await manager.acquire(plan_id)
    try:
        restored = await manager.resume_point(plan_id)
        if restored is None:
            raise PlanNotWaitingError(plan_id, request_id, "it has no checkpoint")
        checkpoint = restored.checkpoint
        completed = [r for r in checkpoint.node_results.values() if r["status"] == NodeStatus.COMPLETED]
        state = RunState.restored(
            checkpoint.workflow_plan, secrets.token_hex(8), dict(checkpoint.metadata),
            usage=checkpoint.usage, results=completed, journal=restored.journal_records,
            requests=checkpoint.input_requests,
        )
        done = {node_id for node_id in state.records if state.is_completed(node_id)}
        request = take_answer(state.requests, done, plan_id, request_id, value, now)
        async with open_recorder(manager, state, durability="interval", interval=None) as recorder:
            await recorder.checkpoint("answered")
        return request
    finally:
        with anyio.CancelScope(shield=True):
            await manager.release(lease)
