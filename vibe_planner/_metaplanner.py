"""`MetaPlanner`: the façade that plans a vibe, runs it, checkpoints it and resumes it."""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _telemetry as telemetry
from ._events import ProgressEvent
from ._exceptions import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    InvalidMetadataError,
    InvalidVibeError,
    PlanningError,
    VibePlannerError,
)
from ._ids import check_checkpoint_id, check_plan_id
from ._models import (
    Checkpoint,
    CheckpointInfo,
    ExecutionResult,
    InputRequest,
    NodeStatus,
    ResumePoint,
    Vibe,
    WorkflowPlan,
    encode_json_bounded,
)
from ._redact import Redactor
from ._state import RunState, as_record, as_results, utcnow
from .execution._context import Handler, RetryPolicy
from .execution._handlers import default_handlers
from .execution._input import check_answer_ids
from .execution._respond import LiveRuns
from .execution._run import Run, RunSettings
from .execution._scheduler import check_handlers
from .llm import LLMConfig, LLMNodeHandler, LLMSession
from .llm._session import RateLimiter
from .persistence._lease import open_lease
from .persistence._manager import Restored, WorkflowPersistenceManager
from .persistence._recorder import Durability, open_recorder
from .persistence._store import Lease
from .planning import LLMPlanner, OfflinePlanner, Planner
from .planning._offline import offline_llm_handler
from .workers._queue import PlanQueue

__all__ = ["MetaPlanner", "VibeLike"]

logger = logging.getLogger("vibe_planner")

VibeLike = Vibe | str | Mapping[str, Any]
"""A `Vibe`, a description string, or a mapping of `Vibe` fields."""


class MetaPlanner:
    """Plans a vibe into a DAG, runs it concurrently, and resumes it after a crash.

    Args:
        llm: The LLM endpoint for planning and ``llm`` nodes. ``None`` (default) reads
            ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` / ``VIBE_PLANNER_MODEL`` and stays offline
            when neither a key nor a base URL is set; ``False`` forces the offline defaults.
        planner: Any object with ``async plan(vibe) -> WorkflowPlan``; by default the LLM
            planner when an LLM is configured, else the offline planner.
        handlers: Node handlers by kind, added to (and overriding) the built-in ``llm`` and
            ``noop`` handlers.
        persistence_manager: Where checkpoints go; ``.vibe_checkpoints`` by default.
        checkpoint_interval: Write a snapshot every this many finished nodes (``None``: only
            the planned, failure, cancelled and final snapshots).
        durability: ``journal`` (default), ``interval`` or ``none``; see `Durability`.
        max_concurrency: Most nodes running at once.
        retry: Attempts and backoff for failing nodes.
        node_timeout: Default seconds per attempt (``None``: no limit).
        fail_fast: Cancel the rest of the run when a node fails (default: keep running
            independent branches; the failed node's dependents are skipped).
        progress_callback: Called (sync or async) with every `ProgressEvent` of every run, from
            a task of its own: a slow callback misses events rather than slowing the run, and
            its exceptions are logged, never raised.
        clock: Returns the current time (aware, UTC) by which input requests are asked and
            expire; for tests and simulations (default: the system clock).

    Example:
        >>> planner = MetaPlanner(checkpoint_interval=5, max_concurrency=16)

    """

    def __init__(
        self,
        *,
        llm: LLMConfig | Literal[False] | None = None,
        planner: Planner | None = None,
        handlers: Mapping[str, Handler] | None = None,
        persistence_manager: WorkflowPersistenceManager | None = None,
        checkpoint_interval: int | None = 5,
        durability: Durability = "journal",
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        node_timeout: float | None = 300.0,
        fail_fast: bool = False,
        progress_callback: Callable[[ProgressEvent], Any] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if checkpoint_interval is not None and checkpoint_interval < 1:
            raise ValueError(f"checkpoint_interval must be >= 1 or None, got {checkpoint_interval}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if durability not in ("journal", "interval", "none"):
            raise ValueError(f"durability must be 'journal', 'interval' or 'none', got {durability!r}")
        self._llm: LLMConfig | None = LLMConfig.from_env() if llm is None else (llm or None)
        self._redactor = Redactor([self._llm.api_key] if self._llm else [])
        self.handlers: dict[str, Handler] = {**default_handlers(), **(handlers or {})}
        """Node handlers by kind. The built-in ``llm`` handler stands for "the configured LLM,
        else the offline stand-in"; replace it (here or later) and your handler runs instead."""
        self._rate_limiter = RateLimiter(self._llm.requests_per_minute if self._llm else None)
        if planner is None:
            planner = (LLMPlanner(self._llm, self.handlers, self._rate_limiter) if self._llm
                       else OfflinePlanner())
        self.planner: Planner = planner
        self.persistence_manager = persistence_manager or WorkflowPersistenceManager()
        self.checkpoint_interval = checkpoint_interval
        self.durability: Durability = durability
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.node_timeout = node_timeout
        self.fail_fast = fail_fast
        self.progress_callback = progress_callback
        self._subscribers: list[MemoryObjectSendStream[ProgressEvent]] = []
        self.clock: Callable[[], datetime] = clock or utcnow
        self._live = LiveRuns()

    @property
    def llm(self) -> LLMConfig | None:
        """The LLM endpoint in use (``None``: offline); fixed at construction, like the planner."""
        return self._llm

    @property
    def offline(self) -> bool:
        """True when planning uses the embedded offline planner (no LLM, no custom planner)."""
        return isinstance(self.planner, OfflinePlanner)

    def _llm_session_needed(self) -> bool:
        """Whether ``llm`` nodes go to the configured LLM (the built-in handler, an LLM set)."""
        return self._llm is not None and self.handlers.get("llm") is offline_llm_handler

    def _ran_offline(self, plan: WorkflowPlan) -> bool:
        """Whether a run of *plan* used an offline stand-in (what results call "offline").

        That is: it was planned by the offline planner, or its ``llm`` nodes are run by the
        built-in handler with no LLM configured.
        """
        offline_llm = self._llm is None and self.handlers.get("llm") is offline_llm_handler
        return plan.planner == OfflinePlanner.name or (
            offline_llm and any(node.kind == "llm" for node in plan.nodes))

    @contextlib.asynccontextmanager
    async def subscribe(
        self, buffer: int = 1024
    ) -> AsyncIterator[MemoryObjectReceiveStream[ProgressEvent]]:
        """Receive the `ProgressEvent`s of every run started while the block is open.

        Events a slow reader has not taken when *buffer* are waiting are dropped (the run
        never waits for a reader). Each run ends with a `RunFinished` event.

        Example:
            >>> async def watch(planner, vibe):
            ...     async with planner.subscribe() as events, anyio.create_task_group() as tg:
            ...         tg.start_soon(planner.execute_with_resume, vibe)
            ...         async for event in events:
            ...             print(event.kind, event.completed, "/", event.total)
            ...             if isinstance(event, RunFinished):
            ...                 break

        """
        send, receive = anyio.create_memory_object_stream[ProgressEvent](buffer)
        self._subscribers.append(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    # -- planning -------------------------------------------------------------------------------
    async def plan(self, vibe: VibeLike, *, plan_id: str | None = None) -> WorkflowPlan:
        """Ask the planner for a plan of *vibe* (no execution, no checkpoint)."""
        vibe = as_vibe(vibe)
        plan_id = check_plan_id(plan_id) if plan_id is not None else vibe.default_plan_id()
        with telemetry.plan_span(str(getattr(self.planner, "name", type(self.planner).__name__))) as span:
            try:
                plan = await self.planner.plan(vibe)
            except VibePlannerError:
                raise
            except Exception as exc:
                reason = f"{type(self.planner).__name__}.plan raised {exc!r}"
                safe = self._redactor(reason)
                # An exception that quotes the key is not chained: tracebacks would print it.
                raise PlanningError(safe) from (exc if safe == reason else None)
            if not isinstance(plan, WorkflowPlan):
                raise PlanningError(f"{type(self.planner).__name__}.plan returned {type(plan).__name__}, "
                                    "not a WorkflowPlan")
            telemetry.plan_made(span, plan)
        check_handlers(plan.nodes, self.handlers)
        if plan.plan_id == plan_id and plan.vibe == vibe:
            return plan
        return plan.model_copy(update={"plan_id": plan_id, "vibe": vibe})

    # -- running --------------------------------------------------------------------------------
    async def execute(
        self, vibe: VibeLike, *, plan_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> ExecutionResult:
        """Plan and run *vibe* from scratch (earlier checkpoints of the plan are kept)."""
        started = time.monotonic()  # the run's duration counts planning
        metadata = check_metadata(metadata)
        vibe = as_vibe(vibe)
        plan_id = check_plan_id(plan_id) if plan_id is not None else vibe.default_plan_id()
        with telemetry.workflow_span(plan_id):
            async with self._locked(plan_id):
                plan = await self.plan(vibe, plan_id=plan_id)
                return await self._run(RunState(plan, _new_run_id(), dict(metadata or {})), None,
                                       started=started)

    async def execute_with_resume(
        self,
        vibe: VibeLike,
        *,
        checkpoint_id: str | None = None,
        plan_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        """Resume *vibe*'s plan from its latest checkpoint (or *checkpoint_id*), else start fresh.

        Completed nodes are never run again and the planner is not called again. If the plan
        already completed, the stored result is returned at once.

        Raises:
            CheckpointCorruptError: The checkpoint to resume from is damaged (catch it and
                call `execute` to start over; the damaged file is left in place).
            CheckpointMismatchError: The plan id's checkpoints were made for another vibe.
            PlanLockedError: Another process is running this plan.
        """
        started = time.monotonic()
        metadata = check_metadata(metadata)
        vibe = as_vibe(vibe)
        plan_id = check_plan_id(plan_id) if plan_id is not None else vibe.default_plan_id()
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id)
        with telemetry.workflow_span(plan_id):
            async with self._locked(plan_id):
                restored = await self._restore(plan_id, checkpoint_id)
                if restored is None:
                    plan = await self.plan(vibe, plan_id=plan_id)
                    return await self._run(RunState(plan, _new_run_id(), dict(metadata or {})), None,
                                           started=started)
                stored = restored.checkpoint.vibe
                if stored.fingerprint() != vibe.fingerprint():
                    raise CheckpointMismatchError(
                        plan_id, f"it was planned for the vibe {stored.description[:60]!r}, "
                        f"not {vibe.description[:60]!r}")
                return await self._resume(restored, metadata, from_latest=checkpoint_id is None,
                                          started=started)

    async def resume(self, plan_id: str, *, checkpoint_id: str | None = None) -> ExecutionResult:
        """Resume a plan by id, with the vibe stored in its checkpoint.

        Raises:
            CheckpointNotFoundError: The plan has no checkpoint.

        """
        check_plan_id(plan_id)
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id)
        started = time.monotonic()
        if not await self.persistence_manager.has_checkpoints(plan_id):
            raise CheckpointNotFoundError(checkpoint_id, plan_id)  # before the lock makes a folder
        with telemetry.workflow_span(plan_id):
            async with self._locked(plan_id):
                restored = await self._restore(plan_id, checkpoint_id)
                if restored is None:
                    raise CheckpointNotFoundError(None, plan_id)
                return await self._resume(restored, None, from_latest=checkpoint_id is None,
                                          started=started)

    async def submit(
        self, vibe: VibeLike, *, plan_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Queue *vibe* for the workers of this planner's PostgreSQL store; return its plan id.

        A `Worker` (``vibe-planner worker``) on the same store plans and runs it. A plan
        already queued or running is left as it is; one that ended is queued again (a
        completed one then just returns its stored result). Raises `TypeError` if the store
        is not a `PostgresCheckpointStore`.
        """
        metadata = check_metadata(metadata)
        vibe = as_vibe(vibe)
        plan_id = check_plan_id(plan_id) if plan_id is not None else vibe.default_plan_id()
        await PlanQueue.of(self.persistence_manager.store).submit(plan_id, vibe, metadata)
        return plan_id

    # -- human input ----------------------------------------------------------------------------
    async def arespond(self, plan_id: str, request_id: str, value: Any) -> InputRequest:
        """Answer a node's pending request (`InputRequest`); return it once the answer is durable.

        If the plan runs in this process, the run takes the answer and the node runs again at
        once; otherwise the answer is written as an ``answered`` checkpoint and the node runs
        on the next `execute_with_resume` / `resume`. Nothing is recorded when this raises.

        Raises:
            InvalidAnswerError: *value* does not match the request's JSON schema.
            UnknownRequestError: The plan has no request *request_id*.
            RequestAlreadyAnsweredError: The request has an answer already (the first stands).
            RequestExpiredError: The request's deadline has passed.
            PlanNotWaitingError: The plan has no pending request (or no checkpoint).
            PlanLockedError: Another process is running the plan.
        """
        check_answer_ids(plan_id, request_id)
        manager = self.persistence_manager if self.durability != "none" else None
        return await self._live.answer(manager, plan_id, request_id, value, now=self.clock())

    def respond(self, plan_id: str, request_id: str, value: Any) -> InputRequest:
        """Blocking twin of `arespond`, for scripts and threads (not for the event loop's thread).

        From a worker thread of the app's event loop (``anyio.to_thread``) it runs `arespond`
        on that loop, so a run of this planner alive there is woken in place.
        """
        call = functools.partial(self.arespond, plan_id, request_id, value)
        if _on_event_loop():
            raise RuntimeError("respond() blocks; on the event loop use: await planner.arespond(...)")
        try:
            anyio.from_thread.run_sync(_nothing)  # only works in an event loop's worker thread
        except RuntimeError:
            return anyio.run(call)  # a plain thread: the call gets a loop of its own
        return anyio.from_thread.run(call)

    # -- checkpoints ----------------------------------------------------------------------------
    async def create_checkpoint(
        self,
        plan_id: str,
        execution_state: ExecutionResult | Checkpoint,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Write a ``manual`` checkpoint of *execution_state* for *plan_id*; return its id.

        *execution_state* is a result of `execute` (or a loaded `Checkpoint`) of the same plan:
        its completed nodes are what a later resume will not run again.
        """
        check_plan_id(plan_id)
        metadata = check_metadata(metadata)
        plan = execution_state.plan if isinstance(execution_state, ExecutionResult) \
            else execution_state.workflow_plan
        if plan.plan_id != plan_id:
            raise CheckpointMismatchError(plan_id, f"the execution state is of plan {plan.plan_id!r}")
        # A run id of its own: the state given is all this checkpoint holds. Reusing the
        # original run's id would let that run's journal (a crashed run's, say) be replayed
        # on top of it at the next resume.
        completed = [as_record(r) for r in execution_state.node_results.values()
                     if r.status == NodeStatus.COMPLETED]
        requests = execution_state.pending_requests if isinstance(execution_state, ExecutionResult) \
            else execution_state.input_requests  # what the plan waits for stays answerable
        state = RunState.restored(plan, _new_run_id(), dict(metadata or {}), usage=execution_state.usage,
                                  results=completed, requests=requests)
        async with self._locked(plan_id), open_recorder(
            self.persistence_manager, state, durability="interval", interval=None
        ) as recorder:
            checkpoint_id = await recorder.checkpoint("manual")
        assert checkpoint_id is not None
        return checkpoint_id

    async def list_checkpoints(self, plan_id: str | None = None) -> list[CheckpointInfo]:
        """Return checkpoint summaries, newest first (see `WorkflowPersistenceManager`)."""
        return await self.persistence_manager.list_checkpoints(plan_id)

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """Load and verify one checkpoint."""
        return await self.persistence_manager.get_checkpoint(checkpoint_id)

    async def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete one checkpoint."""
        await self.persistence_manager.delete_checkpoint(checkpoint_id)

    # -- internals ------------------------------------------------------------------------------
    def _locked(self, plan_id: str) -> contextlib.AbstractAsyncContextManager[Lease | None]:
        """Hold the plan's lease (renewed while held, where leases expire) for a block."""
        manager = self.persistence_manager if self.durability != "none" else None
        return _held(self._live, manager, plan_id)

    async def _restore(self, plan_id: str, checkpoint_id: str | None) -> Restored[ResumePoint] | None:
        if self.durability == "none" and checkpoint_id is None:
            return None
        return await self.persistence_manager.resume_point(plan_id, checkpoint_id)

    async def _resume(
        self, restored: Restored[ResumePoint], metadata: Mapping[str, Any] | None, *, from_latest: bool,
        started: float | None = None,
    ) -> ExecutionResult:
        checkpoint = restored.checkpoint
        if restored.journal_problem is not None:
            logger.warning("plan %s: ignored the end of its journal: %s", checkpoint.plan_id,
                           restored.journal_problem)
        done = not checkpoint.pending_nodes and not checkpoint.failed_nodes
        if done and not restored.journal_records:
            return _stored_result(checkpoint, offline=self._ran_offline(checkpoint.workflow_plan))
        check_handlers(checkpoint.workflow_plan.nodes, self.handlers)
        completed = [r for r in checkpoint.node_results.values() if r["status"] == NodeStatus.COMPLETED]
        state = RunState.restored(
            checkpoint.workflow_plan, _new_run_id(), {**checkpoint.metadata, **(metadata or {})},
            usage=checkpoint.usage, results=completed, journal=restored.journal_records,
            requests=checkpoint.input_requests,
        )
        return await self._run(state, checkpoint.checkpoint_id, from_latest=from_latest, started=started)

    async def _run(
        self, state: RunState, resumed_from: str | None, *, from_latest: bool = True,
        started: float | None = None,
    ) -> ExecutionResult:
        if not self._llm_session_needed() or not any(n.kind == "llm" for n in state.plan.nodes):
            return await self._run_with(state, resumed_from, self.handlers, from_latest, started)
        assert self._llm is not None
        async with LLMSession(self._llm, self._rate_limiter) as session:
            handlers: dict[str, Handler] = {**self.handlers, "llm": LLMNodeHandler(session)}
            return await self._run_with(state, resumed_from, handlers, from_latest, started)

    async def _run_with(
        self, state: RunState, resumed_from: str | None, handlers: Mapping[str, Handler],
        from_latest: bool = True, started: float | None = None,
    ) -> ExecutionResult:
        run = Run(
            state, handlers, self._settings(), self.persistence_manager, resumed_from=resumed_from,
            from_latest=from_latest, callback=self.progress_callback,
            subscribers=list(self._subscribers), offline=self._ran_offline(state.plan), started=started,
            on_accepting=functools.partial(self._live.attach, state.plan.plan_id),
        )
        result = await run.execute()
        telemetry.run_finished(result)
        if result.offline:
            logger.info("plan %s ran offline (no LLM configured)", state.plan.plan_id)
        return result

    def _settings(self) -> RunSettings:
        return RunSettings(
            checkpoint_interval=self.checkpoint_interval, durability=self.durability,
            max_concurrency=self.max_concurrency, retry=self.retry, node_timeout=self.node_timeout,
            fail_fast=self.fail_fast, redactor=self._redactor, clock=self.clock,
        )


@contextlib.asynccontextmanager
async def _held(
    live: LiveRuns, manager: WorkflowPersistenceManager | None, plan_id: str
) -> AsyncIterator[Lease | None]:
    """Hold the plan's lease, the plan registered for answers meanwhile.

    The registration outlives the lease on the way out: an answer that waited for the lease
    goes ahead only once the lease is free.
    """
    with live.holding(plan_id):
        async with open_lease(manager, plan_id) as lease:
            yield lease


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return run metadata as a dict, or raise `InvalidMetadataError` if it cannot be stored."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"expected a mapping, got {type(metadata).__name__}")
    value = dict(metadata)
    try:
        encode_json_bounded(value)
    except TypeError as exc:
        raise InvalidMetadataError(str(exc)) from None
    return value


def as_vibe(vibe: VibeLike) -> Vibe:
    """Coerce a `Vibe`, a description string or a mapping into a `Vibe`."""
    if isinstance(vibe, Vibe):
        return vibe
    if isinstance(vibe, str):
        return Vibe(description=vibe)
    if isinstance(vibe, Mapping):
        return Vibe(**dict(vibe))
    raise InvalidVibeError([f"expected a Vibe, a str or a mapping, got {type(vibe).__name__}"])


def _nothing() -> None:
    pass


def _on_event_loop() -> bool:
    """Whether this thread is running an event loop (where a blocking call would hang it)."""
    try:
        anyio.get_current_task()
    except Exception:  # no async library running in this thread
        return False
    return True


def _new_run_id() -> str:
    return secrets.token_hex(8)


def _stored_result(checkpoint: ResumePoint, *, offline: bool) -> ExecutionResult:
    plan = checkpoint.workflow_plan
    results = as_results(checkpoint.node_results)
    outputs = {k: results[k].output for k in plan.sinks()}
    return ExecutionResult(
        plan_id=checkpoint.plan_id, run_id=checkpoint.run_id, status="completed", plan=plan,
        node_results=results, outputs=outputs, resumed_from=checkpoint.checkpoint_id,
        nodes_restored=len(checkpoint.completed_nodes), usage=checkpoint.usage,
        offline=offline,
    )
