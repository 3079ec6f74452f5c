"""`Run`: one execution of one plan, from its first snapshot to its result.

A run owns its state, its scheduler, its checkpoint writer and its progress events; the
`MetaPlanner` façade builds one per call and awaits `Run.execute`. Its life, in order:

1. the ``planned`` snapshot (a fresh run) or the ``resumed`` one (a resume), durable before
   any node runs unless the run's journal can stand in for it (see `Run._start`);
2. the scheduler runs every unfinished node, while the writer journals completions and writes
   a snapshot every ``checkpoint_interval`` of them;
3. a ``final`` snapshot (``waiting`` if nodes wait for a person's answer), or a ``cancelled``
   one if the run was cancelled or a handler raised a `BaseException`; then the result.

While the scheduler runs, `Run.answer` takes answers to the run's input requests (the node is
queued again at once, and the answer is durable in an ``answered`` snapshot when it returns).

A failure of the writer (a full disk, say) cancels the scheduler and is raised once, as itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._events import CheckpointWritten, EventBus, NodeAnswered, PlanCreated, ProgressEvent, RunFinished
from .._models import ExecutionResult, InputRequest, RunStatus
from .._redact import Redactor
from .._state import RunState, utcnow
from ..persistence._manager import WorkflowPersistenceManager
from ..persistence._recorder import Durability, RunRecorder, open_recorder
from ._context import Handler, RetryPolicy
from ._input import InputDesk, pending_requests
from ._scheduler import Scheduler

__all__ = ["Run", "RunSettings"]


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How a run schedules its nodes and checkpoints them (see `MetaPlanner` for each)."""

    checkpoint_interval: int | None = 5
    durability: Durability = "journal"
    max_concurrency: int = 16
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    node_timeout: float | None = 300.0
    fail_fast: bool = False
    redactor: Redactor = field(default_factory=Redactor)
    """Takes the API key out of node error messages (a custom handler may quote it)."""
    clock: Callable[[], datetime] = utcnow
    """The time input requests are asked and expire by (aware UTC; injectable for tests)."""


class Run:
    """One execution of one plan.

    Args:
        state: The plan and what is already done (restored results, on a resume).
        handlers: Node handlers by kind.
        settings: Scheduling and checkpointing settings.
        manager: Where checkpoints go (unused with durability ``none``).
        resumed_from: The checkpoint this run resumes from, if any.
        from_latest: Whether *resumed_from* is the plan's latest checkpoint.
        callback: Progress callback (sync or async), called from a task of its own.
        subscribers: Streams that receive every event.
        offline: Whether the run uses an offline stand-in (said in events and the result).
        on_accepting: Called with the run when it starts taking answers (`answer`), and with
            ``None`` when it stops.
        started: When the call began (``time.monotonic()``), planning included; now if not given.

    """

    def __init__(
        self,
        state: RunState,
        handlers: Mapping[str, Handler],
        settings: RunSettings,
        manager: WorkflowPersistenceManager,
        *,
        resumed_from: str | None = None,
        from_latest: bool = True,
        callback: Callable[[ProgressEvent], Any] | None = None,
        subscribers: Sequence[MemoryObjectSendStream[ProgressEvent]] = (),
        offline: bool = False,
        on_accepting: Callable[[Run | None], None] | None = None,
        started: float | None = None,
    ) -> None:
        self.state = state
        self._on_accepting = on_accepting
        self.settings = settings
        self.resumed_from = resumed_from
        self._from_latest = from_latest
        self._manager = manager if settings.durability != "none" else None
        self._offline = offline
        self._started = time.monotonic() if started is None else started
        self._bus = EventBus(callback, list(subscribers))
        self._emit = self._bus.emit if self._bus.active else None
        self._restored = sum(1 for node_id in state.records if state.is_completed(node_id))
        self.desk = InputDesk(state, clock=settings.clock, on_answered=self._answered)
        self.scheduler = Scheduler(
            state, handlers, max_concurrency=settings.max_concurrency,
            retry=settings.retry, node_timeout=settings.node_timeout, fail_fast=settings.fail_fast,
            emit=self._emit, started=self._started, redact=settings.redactor, desk=self.desk,
        )
        self.status: RunStatus = "failed"
        self._recorder: RunRecorder | None = None

    async def execute(self) -> ExecutionResult:
        """Run the plan to its end; return the result (a cancellation propagates)."""
        state = self.state
        if self._emit is not None:
            self._emit(self.scheduler.event(PlanCreated, planner=state.plan.planner,
                                            resumed_from=self.resumed_from, offline=self._offline))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._bus.deliver, name="vibe_planner progress callback")
                try:
                    await self._record_and_run()
                finally:
                    if self._emit is not None:
                        self._emit(self.scheduler.event(RunFinished, status=self.status,
                                                        duration=time.monotonic() - self._started))
                    self._bus.close()
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        return await self._result()

    async def _record_and_run(self) -> None:
        settings = self.settings
        async with open_recorder(
            self._manager, self.state, durability=settings.durability,
            interval=settings.checkpoint_interval, on_checkpoint=self._checkpoint_written,
            resumed_from=self.resumed_from if self._from_latest else None,
        ) as recorder:
            self._recorder = recorder
            if self._on_accepting is not None:
                self._on_accepting(self)
            try:
                self.status = await self._drive(recorder)
            except Exception:
                raise  # an error of ours (a checkpoint write, say): the run failed
            except BaseException:
                self.status = "cancelled"  # cancelled, or a handler's BaseException
                raise

    async def _drive(self, recorder: RunRecorder) -> RunStatus:
        await self._start(recorder)
        try:
            with recorder.cancelled_on_failure():
                try:
                    status = await self.scheduler.run(recorder)
                finally:
                    if self._on_accepting is not None:
                        self._on_accepting(None)
            recorder.raise_failure()  # a failed write cancelled the scheduler
        except BaseException:
            # Cancelled, a handler's BaseException, or the writer failed: the run stops here,
            # and says so on disk (unless the disk is what failed) before it goes.
            if recorder.failure is None:
                with anyio.CancelScope(shield=True):
                    self.scheduler.mark_cancelled()
                    await recorder.checkpoint("cancelled")
            raise
        await recorder.checkpoint("waiting" if self.scheduler.suspended else "final")
        return status

    async def _start(self, recorder: RunRecorder) -> None:
        if self.resumed_from is None:
            # Durable before any node runs, so that a resume never has to plan again.
            await recorder.checkpoint("planned")
        elif self._from_latest:
            # Not awaited: nodes start at once. Until this snapshot is durable the checkpoint
            # resumed from stays the latest, and this run's journal starts with a header naming
            # it, so a resume after a crash in that window replays the journal all the same.
            recorder.request("resumed")
        else:
            # Resumed from an older checkpoint than the latest: until this snapshot is durable
            # a crash would resume from the latest, whose branch this run's journal is not on.
            await recorder.checkpoint("resumed")

    @property
    def accepting_answers(self) -> bool:
        """Whether `answer` can take an answer now (the scheduler has not ended)."""
        return self._recorder is not None and not self.scheduler.over and self.status != "cancelled"

    async def answer(self, request_id: str, value: Any) -> InputRequest:
        """Take an answer to one of this run's requests; return once it is durable.

        The waiting node is queued again at once (its handler runs from the top and gets the
        answer); the answer is in an ``answered`` snapshot when this returns. Raises the
        `InputRequestError` saying why the answer cannot be taken (nothing is then changed).
        """
        assert self._recorder is not None, "answer() before the run started: check accepting_answers"
        request = self.desk.answer(self.state.plan.plan_id, request_id, value)
        self.scheduler.wake(request.node_id)
        await self._recorder.checkpoint("answered")
        return request

    def _answered(self, node_id: str, request_id: str) -> None:
        if self._emit is not None:
            self._emit(self.scheduler.event(NodeAnswered, node_id=node_id, request_id=request_id))

    def _checkpoint_written(self, checkpoint_id: str, reason: str) -> None:
        if self._emit is not None:
            self._emit(self.scheduler.event(CheckpointWritten, checkpoint_id=checkpoint_id, reason=reason))

    async def _result(self) -> ExecutionResult:
        state = self.state
        written = self._recorder.written if self._recorder is not None else []
        return ExecutionResult(
            plan_id=state.plan.plan_id, run_id=state.run_id, status=self.status, plan=state.plan,
            node_results=await state.node_results(),
            outputs={k: state.outputs[k] for k in state.plan.sinks() if state.is_completed(k)},
            resumed_from=self.resumed_from, checkpoints_written=written,
            nodes_run=self.scheduler.nodes_run, nodes_restored=self._restored,
            duration_seconds=time.monotonic() - self._started, usage=state.usage,
            offline=self._offline, pending_requests=pending_requests(
                state.requests, {k for k in state.records if state.is_completed(k)}),
        )


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the one meaningful error of a task group's exception group."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not isinstance(exc, cancelled) and all(exc is not seen for seen in leaves):
            leaves.append(exc)
    if len(leaves) == 1:
        return leaves[0]
    return group
