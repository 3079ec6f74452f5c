"""The scheduler: start each node the moment its own dependencies are done.

There are no waves. Bookkeeping is synchronous on the event loop: when a node finishes, its
dependents' counters drop and any that reach zero join the ready queue. Up to
``max_concurrency`` worker tasks, all in one anyio task group, take nodes from that queue; a
worker that finishes a node takes the next ready one at once, so a node starts the moment its
own dependencies are done and a slot is free. Workers instead of a task per node: spawning a
task costs more than running a no-op node, and the pool bounds concurrency by construction.

Workers are started on demand: a worker that takes a node while more are ready wakes idle
workers for them, and if there are too few, asks the run's own task to start more, in batches
that double. The first node thus starts after one spawn, not after ``max_concurrency`` of them,
and a plan that never has many nodes ready at once never pays for, nor wakes at the end, a
crowd of idle workers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from .. import _telemetry as telemetry
from .._events import (
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    NodeWaiting,
    ProgressEvent,
)
from .._exceptions import PlanValidationError, StrayCancellationError
from .._models import CheckpointReason, NodeStatus, RunStatus, WorkflowNode
from .._redact import Redactor
from .._state import Record, RunState, utcnow
from ._context import Handler, NodeContext, RetryPolicy
from ._input import InputDesk, InputPending, pending_signal

__all__ = ["Recorder", "Scheduler"]

Emit = Callable[[ProgressEvent], None]
_STREAK = 32
"""Nodes a worker runs before yielding to the event loop (about a millisecond of no-op nodes)."""


class Recorder(Protocol):
    """What the scheduler tells the run's checkpoint writer (`RunRecorder` is one)."""

    def node_finished(self, record: Record) -> None:
        """Note a node that completed or failed (synchronous, never waits)."""

    def request(self, reason: CheckpointReason) -> int:
        """Ask for a snapshot without waiting."""


class _NoRecorder:
    def node_finished(self, record: Record) -> None:
        pass

    def request(self, reason: CheckpointReason) -> int:
        return 0


class Scheduler:
    """Runs the unfinished nodes of a `RunState`'s plan."""

    def __init__(
        self,
        state: RunState,
        handlers: Mapping[str, Handler],
        *,
        max_concurrency: int,
        retry: RetryPolicy,
        node_timeout: float | None,
        fail_fast: bool,
        emit: Emit | None = None,
        started: float | None = None,
        redact: Callable[[str], str] | None = None,
        desk: InputDesk | None = None,
    ) -> None:
        self._state = state
        self._handlers = handlers
        self._recorder: Recorder = _NoRecorder()
        self._max = max_concurrency
        self._retry = retry
        self._timeout = node_timeout
        self._fail_fast = fail_fast
        self._emit = emit
        self._redact = Redactor() if redact is None else redact  # secrets out of error texts
        self._t0 = time.monotonic() if started is None else started
        self._plan_id, self._vibe = state.plan.plan_id, state.plan.vibe
        self._nodes = {node.id: node for node in state.plan.nodes}
        self._dependents: dict[str, tuple[str, ...]] = {}
        self._waiting: dict[str, int] = {}
        self._ready: deque[str] = deque()
        self._in_flight: dict[str, datetime] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle: deque[anyio.Event] = deque()
        self._workers = 0
        self._streak = 0  # nodes run since a worker last yielded on purpose
        self._turn = 0  # streaks begun
        self._called = 0  # workers woken or started that have not looked at the queue yet
        self._short: anyio.Event | None = None  # set: ready nodes want more workers
        self._over = False  # nothing ready and nothing running: the run is over
        self.failed = 0
        self.completed = sum(1 for r in state.records.values() if r["status"] == "completed")
        self.nodes_run = 0
        self._desk = desk
        self.suspended: dict[str, str] = {}
        """Nodes waiting for a person's answer: node id → request id."""
        check_handlers(state.plan.nodes, handlers)

    async def run(self, recorder: Recorder) -> RunStatus:
        """Run every node not completed yet, telling *recorder*; return ``completed`` or ``failed``."""
        self._recorder = recorder
        self._count_dependencies()
        if self._waiting:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._desk is not None:
                    tg.start_soon(self._desk.watch_deadlines, self.suspended, self.wake,
                                  name="vibe_planner input deadlines")
                await self._grow_pool()
            self.mark_cancelled()  # nodes stopped by fail_fast
        # Completed means every node is: counted, not inferred from the absence of failures
        # (a node whose worker was stopped without a record is not a success).
        if self.completed == len(self._nodes) and not self.failed:
            return "completed"
        return "waiting" if self.suspended and not self.failed else "failed"

    @property
    def over(self) -> bool:
        """Whether no node can start any more (a woken node would find no worker)."""
        return self._over

    def wake(self, node_id: str) -> bool:
        """Queue a waiting node again (its answer came); return whether the run was still live."""
        if self._over or self._tg is None or node_id not in self.suspended:
            return False
        del self.suspended[node_id]
        self._ready.append(node_id)
        self._call_workers()
        return True

    def mark_cancelled(self) -> None:
        """Record nodes that were running when the run was cancelled as ``cancelled``."""
        for node_id, started_at in self._in_flight.items():
            self._state.finish_unsuccessfully(node_id, NodeStatus.CANCELLED, started_at=started_at)
        self._in_flight.clear()

    # -- internals ------------------------------------------------------------------------------
    def _count_dependencies(self) -> None:
        """Fill the unfinished nodes' waiting counts and dependents; queue those ready now."""
        state, nodes = self._state, self._nodes
        done = {node_id for node_id in state.records if state.is_completed(node_id)}
        # Keys: the nodes to run, in plan order (only they wait for each other). Tuples, not
        # lists: tuples of strings drop out of the garbage collector's care, so 10,000 nodes
        # do not add 10,000 containers for every later full collection to traverse.
        to_run = [node_id for node_id in state.plan.order if node_id not in done]
        children: dict[str, list[str]] = {}
        waiting, ready = self._waiting, self._ready
        for node_id in to_run:
            count = 0
            for dep in nodes[node_id].depends_on:
                if dep not in done:
                    children.setdefault(dep, []).append(node_id)
                    count += 1
            waiting[node_id] = count
            if not count:
                ready.append(node_id)
        self._dependents = {node_id: tuple(children.get(node_id, ())) for node_id in to_run}

    async def _grow_pool(self) -> None:
        """Start workers while ready nodes want them, until the run is over.

        Each round starts at most as many workers as there are (one at first), so the first
        node starts after a single spawn rather than after ``max_concurrency`` of them, and a
        backlog still gets its workers within a few loop turns, in doubling batches.
        """
        assert self._tg is not None
        while True:
            short = len(self._ready) - self._called
            wanted = min(short, self._max - self._workers, max(1, self._workers))
            for _ in range(wanted):
                self._workers += 1
                self._called += 1
                self._tg.start_soon(self._worker, name=f"vibe_planner worker {self._workers}")
            if self._over or not self._workers:
                return
            self._short = anyio.Event()
            await self._short.wait()

    def _call_workers(self) -> None:
        """Wake idle workers for the ready nodes no worker is on its way to; ask for more if short."""
        wanted = len(self._ready) - self._called
        woken = min(wanted, len(self._idle))
        for _ in range(woken):
            self._idle.popleft().set()
        self._called += woken
        if wanted > woken and self._workers < self._max and self._short is not None:
            self._short.set()

    async def _worker(self) -> None:
        self._called -= 1
        while True:
            if self._ready:
                node_id = self._ready.popleft()
                if len(self._ready) > self._called:
                    self._call_workers()
                self._in_flight[node_id] = started_at = utcnow()
                await self._run_node(node_id, started_at)
                self._streak += 1
                if self._streak >= _STREAK:
                    # Handlers that never wait (no-ops, cached results) would otherwise keep
                    # the workers on the loop for the whole plan. Past the streak every worker
                    # yields after its node, until one has been back through the loop: the
                    # checkpoint writer, progress callbacks and the app's tasks get their turn.
                    turn = self._turn
                    await anyio.lowlevel.checkpoint()
                    if turn == self._turn:  # the first worker back starts the next streak
                        self._turn += 1
                        self._streak = 0
            elif not self._in_flight:
                # Nothing ready and nothing running: no node can become ready any more.
                self._over = True
                if self._desk is not None:
                    self._desk.stop_watching()
                if self._short is not None:
                    self._short.set()
                self._called += len(self._idle)
                while self._idle:
                    self._idle.popleft().set()
                return
            else:
                wakeup = anyio.Event()
                self._idle.append(wakeup)
                await wakeup.wait()
                self._called -= 1

    async def _run_node(self, node_id: str, started_at: datetime) -> None:
        node = self._nodes[node_id]
        with telemetry.node_span(node) as span:
            record = await self._attempts(node, started_at)
            telemetry.node_finished(span, record)
        del self._in_flight[node_id]
        self.nodes_run += 1
        if record["status"] == "waiting":
            if self._emit is not None:
                self._emit(self._waiting_event(node_id))
            return
        self._recorder.node_finished(record)
        if record["status"] == "completed":
            self.completed += 1
            if self._emit is not None:
                duration = (record["finished_at"] - started_at).total_seconds()
                self._emit(self.event(NodeCompleted, node_id=node_id, duration=duration))
            # The worker loop then takes one of the readied nodes and calls workers for the rest.
            waiting, ready = self._waiting, self._ready
            for child in self._dependents[node_id]:
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
        else:
            self.failed += 1
            if self._emit is not None:
                self._emit(self.event(NodeFailed, node_id=node_id, error=record["error"]["message"]))
            self._skip_dependents(node_id)
            if self._fail_fast:
                assert self._tg is not None
                self._tg.cancel_scope.cancel()
            else:
                self._recorder.request("failure")

    async def _attempts(self, node: WorkflowNode, started_at: datetime) -> Record:
        state = self._state
        attempts = node.max_attempts or self._retry.max_attempts
        key = f"{self._plan_id}:{node.id}"
        for attempt in range(1, attempts + 1):
            # Each attempt gets its own copy of its inputs: a handler that changes them changes
            # nobody else's (nor its own next attempt's), as after a resume.
            inputs = state.inputs_of(node.depends_on)
            context = NodeContext(node, inputs, self._vibe, self._plan_id, state.run_id, attempt, key,
                                  desk=self._desk)
            if self._emit is not None:
                self._emit(self.event(NodeStarted, node_id=node.id, attempt=attempt))
            exc = await self._attempt(node, context, started_at)
            if isinstance(exc, dict):
                return exc
            if isinstance(exc, InputPending):
                # Not a failure: the node waits for its answer and runs again once it comes.
                self.suspended[node.id] = exc.request_id
                if self._desk is not None:
                    self._desk.suspended_changed()
                return state.finish_unsuccessfully(node.id, NodeStatus.WAITING, attempts=attempt,
                                                   started_at=started_at, usage=context.usage)
            retryable = _retryable(exc) and attempt < attempts
            if not retryable:
                return self._failed(node, exc, attempt, started_at, context)
            delay = self._retry.delay(attempt, retry_after=_attribute(exc, "retry_after", None))
            if self._emit is not None:
                self._emit(self.event(NodeRetrying, node_id=node.id, attempt=attempt, delay=delay,
                                      error=self._redact(_describe(exc))))
            await anyio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    async def _attempt(
        self, node: WorkflowNode, context: NodeContext, started_at: datetime
    ) -> Record | Exception | InputPending:
        """Run one attempt; return the completed record, the exception that failed it, or the pause."""
        timeout = node.timeout or self._timeout
        handler = self._handlers[node.kind]
        try:
            if timeout is None:
                output = await handler(context)
            else:
                with anyio.fail_after(timeout):
                    output = await handler(context)
            return self._state.complete(
                node.id, output, attempts=context.attempt, started_at=started_at, usage=context.usage
            )
        except Exception as exc:
            return exc
        except (InputPending, BaseExceptionGroup) as exc:
            signal = pending_signal(exc)
            if signal is None:
                raise
            return signal
        except anyio.get_cancelled_exc_class():
            if _run_cancelled():
                raise
            # Not the run's cancellation: the handler let out one of its own (it awaited a task
            # it had cancelled, say). Swallowed, it would end the worker without a record and
            # the run would look complete; it is a failure of the node.
            return StrayCancellationError(
                "the handler let out a cancellation that did not come from the run "
                "(did it await a task it had cancelled?)")

    def _failed(
        self, node: WorkflowNode, exc: Exception, attempt: int, started_at: datetime, context: NodeContext
    ) -> Record:
        error = {
            "type": type(exc).__name__,
            "message": self._redact(_describe(exc))[:4000],
            "retryable": _retryable(exc),
        }
        record = self._state.finish_unsuccessfully(
            node.id,
            NodeStatus.FAILED,
            error=error,
            attempts=attempt,
            started_at=started_at,
            usage=context.usage,
        )
        return record

    def _skip_dependents(self, node_id: str) -> None:
        stack = list(self._dependents[node_id])
        while stack:
            child = stack.pop()
            record = self._state.records.get(child)
            if record is not None and record["status"] == NodeStatus.SKIPPED:
                continue
            self._state.finish_unsuccessfully(
                child,
                NodeStatus.SKIPPED,
                error={
                    "type": "DependencyFailed",
                    "message": f"dependency {node_id!r} failed",
                    "retryable": True,
                },
            )
            self._waiting[child] = -1  # never becomes ready
            if self._emit is not None:
                self._emit(self.event(NodeSkipped, node_id=child, because_of=node_id))
            stack.extend(self._dependents[child])

    def _waiting_event(self, node_id: str) -> ProgressEvent:
        request = self._state.requests[self.suspended[node_id]]
        return self.event(NodeWaiting, node_id=node_id, request_id=request.id, prompt=request.prompt,
                          deadline=request.deadline)

    def event(self, cls: type[ProgressEvent], **fields: Any) -> ProgressEvent:
        """Build an event of *cls* stamped with the run's current counts and elapsed time."""
        return cls(
            plan_id=self._state.plan.plan_id,
            elapsed=time.monotonic() - self._t0,
            total=len(self._nodes),
            completed=self.completed,
            running=len(self._in_flight),
            failed=self.failed,
            **fields,
        )


def check_handlers(nodes: list[WorkflowNode], handlers: Mapping[str, Handler]) -> None:
    """Raise `PlanValidationError` naming the nodes whose kind has no handler."""
    missing = [node.id for node in nodes if node.kind not in handlers]
    if missing:
        kinds = sorted({n.kind for n in nodes if n.kind not in handlers})
        raise PlanValidationError(
            [f"no handler for node kind(s) {kinds} (registered: {sorted(handlers)}); nodes: {missing[:10]}"],
            missing,
        )


def _run_cancelled() -> bool:
    """Whether the current task is being cancelled (by a cancelled scope or a native cancel)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not running on asyncio
        return False
    return task is not None and task.cancelling() > 0


def _retryable(exc: BaseException) -> bool:
    """Whether a handler's exception allows a retry (``retryable``, true unless it says not)."""
    try:
        return bool(getattr(exc, "retryable", True))
    except Exception:
        return True  # a property (or __bool__) that raises says nothing


def _attribute(exc: BaseException, name: str, default: Any) -> Any:
    """Read a steering attribute of a handler's exception; a property that raises is absent."""
    try:
        return getattr(exc, name, default)
    except Exception:
        return default


def _describe(exc: BaseException) -> str:
    """Return an exception's message; one whose ``__str__`` raises is described, not raised."""
    try:
        text = str(exc)
    except Exception as inner:
        return f"<{type(exc).__name__}; its str() raised {type(inner).__name__}>"
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__
