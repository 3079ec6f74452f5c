"""The scheduler: start each node the moment its own dependencies are done.

There are no waves. Bookkeeping is synchronous on the event loop: when a node finishes, its
dependents' counters drop and any that reach zero join the ready queue. ``max_concurrency``
worker tasks (fewer for small plans), all in one anyio task group, take nodes from that queue;
a worker that finishes a node takes the next ready one at once, so a node starts the moment its
own dependencies are done and a slot is free. Workers instead of a task per node: spawning a
task costs more than running a no-op node, and the pool bounds concurrency by construction.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import anyio

from .._events import (
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    ProgressEvent,
)
from .._exceptions import PlanValidationError
from .._models import NodeStatus, RunStatus, WorkflowNode
from .._state import Record, RunState, utcnow
from ..persistence._recorder import RunRecorder
from ._context import Handler, NodeContext, RetryPolicy

__all__ = ["Scheduler"]

Emit = Callable[[ProgressEvent], None]


class Scheduler:
    """Runs the unfinished nodes of a `RunState`'s plan."""

    def __init__(
        self,
        state: RunState,
        handlers: Mapping[str, Handler],
        recorder: RunRecorder,
        *,
        max_concurrency: int,
        retry: RetryPolicy,
        node_timeout: float | None,
        fail_fast: bool,
        emit: Emit | None = None,
        started: float | None = None,
    ) -> None:
        self._state = state
        self._handlers = handlers
        self._recorder = recorder
        self._max = max_concurrency
        self._retry = retry
        self._timeout = node_timeout
        self._fail_fast = fail_fast
        self._emit = emit
        self._t0 = time.monotonic() if started is None else started
        self._nodes = {node.id: node for node in state.plan.nodes}
        self._dependents: dict[str, list[str]] = {}
        self._waiting: dict[str, int] = {}
        self._ready: deque[str] = deque()
        self._in_flight: dict[str, datetime] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle: deque[anyio.Event] = deque()
        self.failed = 0
        self.completed = sum(1 for r in state.records.values() if r["status"] == "completed")
        self.nodes_run = 0
        check_handlers(state.plan.nodes, handlers)

    async def run(self) -> RunStatus:
        """Run every node not completed yet; return ``completed`` or ``failed``."""
        state = self._state
        for node_id in state.plan.order:
            if state.is_completed(node_id):
                continue
            node = self._nodes[node_id]
            self._dependents.setdefault(node_id, [])
            waiting = 0
            for dep in node.depends_on:
                if not state.is_completed(dep):
                    waiting += 1
                    self._dependents.setdefault(dep, []).append(node_id)
            self._waiting[node_id] = waiting
            if waiting == 0:
                self._ready.append(node_id)
        if self._waiting:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for index in range(min(self._max, len(self._waiting))):
                    tg.start_soon(self._worker, name=f"vibe_planner worker {index}")
            self.mark_cancelled()  # nodes stopped by fail_fast
        return "failed" if self.failed else "completed"

    def mark_cancelled(self) -> None:
        """Record nodes that were running when the run was cancelled as ``cancelled``."""
        for node_id, started_at in self._in_flight.items():
            self._state.finish_unsuccessfully(node_id, NodeStatus.CANCELLED, started_at=started_at)
        self._in_flight.clear()

    # -- internals ------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            if self._ready:
                node_id = self._ready.popleft()
                self._in_flight[node_id] = started_at = utcnow()
                await self._run_node(node_id, started_at)
            elif not self._in_flight:
                # Nothing ready and nothing running: no node can become ready any more.
                self._wake_workers(len(self._idle))
                return
            else:
                wakeup = anyio.Event()
                self._idle.append(wakeup)
                await wakeup.wait()

    def _wake_workers(self, count: int) -> None:
        """Wake *count* idle workers (one per ready node: waking them all would cost O(workers))."""
        for _ in range(min(count, len(self._idle))):
            self._idle.popleft().set()

    async def _run_node(self, node_id: str, started_at: datetime) -> None:
        node = self._nodes[node_id]
        record = await self._attempts(node, started_at)
        del self._in_flight[node_id]
        self.nodes_run += 1
        self._recorder.node_finished(record)
        if record["status"] == "completed":
            self.completed += 1
            if self._emit is not None:
                duration = (record["finished_at"] - started_at).total_seconds()
                self._emit(self.event(NodeCompleted, node_id=node_id, duration=duration))
            readied = 0
            for child in self._dependents[node_id]:
                self._waiting[child] -= 1
                if self._waiting[child] == 0:
                    self._ready.append(child)
                    readied += 1
            # This worker takes one ready node itself; the others go to idle workers. With
            # nothing running and nothing ready, idle workers must wake to see the end.
            self._wake_workers(len(self._idle) if not self._in_flight and not self._ready
                               else readied - 1)
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
            if not self._in_flight and not self._ready:
                self._wake_workers(len(self._idle))

    async def _attempts(self, node: WorkflowNode, started_at: datetime) -> Record:
        state, handler = self._state, self._handlers[node.kind]
        attempts = node.max_attempts or self._retry.max_attempts
        timeout = node.timeout or self._timeout
        inputs = {dep: state.outputs[dep] for dep in node.depends_on}
        for attempt in range(1, attempts + 1):
            context = NodeContext(node, inputs, state.plan.vibe, state.plan.plan_id, state.run_id,
                                  attempt, f"{state.plan.plan_id}:{node.id}")
            if self._emit is not None:
                self._emit(self.event(NodeStarted, node_id=node.id, attempt=attempt))
            try:
                if timeout is None:
                    output = await handler(context)
                else:
                    with anyio.fail_after(timeout):
                        output = await handler(context)
                record = state.complete(node.id, output, attempts=attempt, started_at=started_at,
                                        usage=context.usage)
            except Exception as exc:
                retryable = bool(getattr(exc, "retryable", True)) and attempt < attempts
                if not retryable:
                    return self._failed(node, exc, attempt, started_at, context)
                delay = self._retry.delay(attempt, retry_after=getattr(exc, "retry_after", None))
                if self._emit is not None:
                    self._emit(self.event(NodeRetrying, node_id=node.id, attempt=attempt,
                                           delay=delay, error=_describe(exc)))
                await anyio.sleep(delay)
                continue
            return record
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    def _failed(
        self, node: WorkflowNode, exc: Exception, attempt: int, started_at: datetime, context: NodeContext
    ) -> Record:
        error = {"type": type(exc).__name__, "message": _describe(exc)[:4000],
                 "retryable": bool(getattr(exc, "retryable", True))}
        record = self._state.finish_unsuccessfully(
            node.id, NodeStatus.FAILED, error=error, attempts=attempt, started_at=started_at,
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
            self._state.finish_unsuccessfully(child, NodeStatus.SKIPPED, error={
                "type": "DependencyFailed", "message": f"dependency {node_id!r} failed",
                "retryable": True})
            self._waiting[child] = -1  # never becomes ready
            if self._emit is not None:
                self._emit(self.event(NodeSkipped, node_id=child, because_of=node_id))
            stack.extend(self._dependents[child])

    def event(self, cls: type[ProgressEvent], **fields: Any) -> ProgressEvent:
        """Build an event of *cls* stamped with the run's current counts and elapsed time."""
        return cls(plan_id=self._state.plan.plan_id, elapsed=time.monotonic() - self._t0,
                   total=len(self._nodes), completed=self.completed, running=len(self._in_flight),
                   failed=self.failed, **fields)


def check_handlers(nodes: list[WorkflowNode], handlers: Mapping[str, Handler]) -> None:
    """Raise `PlanValidationError` naming the nodes whose kind has no handler."""
    missing = [node.id for node in nodes if node.kind not in handlers]
    if missing:
        kinds = sorted({n.kind for n in nodes if n.kind not in handlers})
        raise PlanValidationError(
            [f"no handler for node kind(s) {kinds} (registered: {sorted(handlers)}); "
             f"nodes: {missing[:10]}"], missing)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__

