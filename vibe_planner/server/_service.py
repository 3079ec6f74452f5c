"""`PlanService`: runs plans in the background for the HTTP API, and keeps their events.

The service owns one task group (opened by ``async with service``, which an app's lifespan
does): every run is a task of it, with a cancel scope of its own, so no task outlives the
service. One subscription to the planner's events, opened before any run starts, feeds each
plan's `EventLog` in the order the events happened.

Plans that were running when the service stopped (SIGTERM, a deploy) leave a marker file in
``<state_dir>/running/``; the next start resumes them (see ``resume_on_start``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from vibe_planner import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWritten,
    ExecutionResult,
    InputRequest,
    InvalidMetadataError,
    MetaPlanner,
    NodeAnswered,
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    NodeWaiting,
    PlanStateError,
    ProgressEvent,
    ServerStoppingError,
    Vibe,
    VibePlannerError,
)

from ._events import EventLog, event_record
from ._status import LivePlan

__all__ = ["PlanService"]

logger = logging.getLogger("vibe_planner.server")

_NODE_STATUS = {NodeStarted: "running", NodeRetrying: "retrying", NodeCompleted: "completed",
                NodeFailed: "failed", NodeSkipped: "skipped", NodeWaiting: "waiting"}
_FINAL = {"completed", "failed", "skipped"}


class PlanService:
    """Runs plans of one `MetaPlanner` in the background and records their progress.

    Args:
        planner: Plans, runs and checkpoints; its settings apply to every run.
        state_dir: Where markers of running plans are kept (``None``: no restart-resume).
        resume_on_start: Resume, when the service starts, the plans whose markers a previous
            service left (they were running when it stopped).
        max_running: Most plans running at once; more wait as ``queued``.
        keep_finished: Finished plans whose event logs stay in memory (the oldest are
            forgotten first; their checkpoints, and so their status, stay on disk).
        heartbeat: Seconds between keep-alive comments on an idle event stream.

    Example:
        >>> service = PlanService(MetaPlanner(), state_dir=".vibe_server")

    """

    def __init__(
        self,
        planner: MetaPlanner,
        *,
        state_dir: str | Path | None = None,
        resume_on_start: bool = True,
        max_running: int = 64,
        keep_finished: int = 100,
        heartbeat: float = 15.0,
    ) -> None:
        if max_running < 1 or keep_finished < 0:
            raise ValueError("max_running must be >= 1 and keep_finished >= 0")
        self.planner = planner
        self.manager = planner.persistence_manager
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.resume_on_start = resume_on_start
        self.heartbeat = heartbeat
        self.keep_finished = keep_finished
        self._limiter = anyio.CapacityLimiter(max_running)
        self._live: dict[str, LivePlan] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._events: MemoryObjectReceiveStream[ProgressEvent] | None = None
        self._processed = 0
        self._caught_up = anyio.Event()
        llm = planner.llm
        key = llm.api_key.get_secret_value() if llm is not None and llm.api_key is not None else ""
        self.secrets: list[str] = [key] if key else []
        """Strings never to be shown (the server adds its API tokens)."""
        self.streams = 0
        """Event streams being served right now (a client that left is not counted)."""

    # -- lifetime ---------------------------------------------------------------------------
    async def __aenter__(self) -> PlanService:
        self._tg = await anyio.create_task_group().__aenter__()
        await self._tg.start(self._dispatch)
        self._accepting = True
        if self.resume_on_start:
            await self._resume_left_over()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True):  # even when cancelled: every run says so on disk
                await self.drain()
        finally:
            self._tg.cancel_scope.cancel()  # the dispatcher
            suppress = await self._tg.__aexit__(*exc_info)
        return suppress

    @property
    def accepting(self) -> bool:
        """Whether new runs are accepted (false once `drain` began)."""
        return self._accepting

    async def drain(self) -> None:
        """Stop accepting runs; cancel the running ones (each writes a ``cancelled`` checkpoint).

        Their markers stay, so the next start resumes them.
        """
        self._accepting = False
        running = [live for live in self._live.values() if live.active]
        for live in running:
            live.stopping = True
            live.scope.cancel()
        for live in running:
            await live.finished.wait()

    # -- commands ---------------------------------------------------------------------------
    async def submit(
        self, vibe: Vibe, plan_id: str | None = None, *, fresh: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> LivePlan:
        """Start planning and running *vibe* in the background; return its live record.

        Raises:
            InvalidIdentifierError: *plan_id* is malformed.
            PlanStateError: The plan is running in this service already.
            CheckpointMismatchError: The plan id's checkpoints were made for another vibe.
            InvalidMetadataError: *metadata* cannot be stored as JSON.
            ServerStoppingError: The service is shutting down.

        """
        plan_id = plan_id if plan_id is not None else vibe.default_plan_id()
        if metadata is not None:
            try:  # checked now, not in the background run: the caller is told, not the log
                orjson.dumps(metadata)
            except orjson.JSONEncodeError as exc:
                raise InvalidMetadataError(str(exc)) from None
        if await self.manager.has_checkpoints(plan_id) and not fresh:  # validates the id too
            latest = await self.manager.latest(plan_id)
            if latest is not None and latest.vibe.fingerprint() != vibe.fingerprint():
                raise CheckpointMismatchError(
                    plan_id, f"it was planned for the vibe {latest.vibe.description[:60]!r}")

        def call() -> Awaitable[ExecutionResult]:
            if fresh:
                return self.planner.execute(vibe, plan_id=plan_id, metadata=metadata)
            return self.planner.execute_with_resume(vibe, plan_id=plan_id, metadata=metadata)

        return await self._start(plan_id, vibe, call, fresh=fresh)

    async def resume(self, plan_id: str) -> LivePlan:
        """Resume a plan from its latest checkpoint, in the background.

        Raises:
            CheckpointNotFoundError: The plan has no checkpoint.
            PlanStateError: The plan is running in this service already.

        """
        if not await self.manager.has_checkpoints(plan_id):
            raise CheckpointNotFoundError(None, plan_id)
        latest = await self.manager.latest(plan_id)
        assert latest is not None
        return await self._start(plan_id, latest.vibe, lambda: self.planner.resume(plan_id), fresh=False)

    async def cancel(self, plan_id: str) -> LivePlan:
        """Cancel a running plan and wait until it has written its ``cancelled`` checkpoint."""
        stored = await self.manager.has_checkpoints(plan_id)  # validates the id
        live = self._live.get(plan_id)
        if live is None and not stored:
            raise CheckpointNotFoundError(None, plan_id)
        if live is None or not live.active:
            raise PlanStateError(plan_id, "is not running")
        live.scope.cancel()
        await live.finished.wait()
        return live

    async def respond(self, plan_id: str, request_id: str, value: Any) -> InputRequest:
        """Record a person's answer to a plan's pending request, and let the plan go on.

        A run still going on in this service takes the answer at once; a plan that ended
        ``waiting`` is resumed here, in the background.

        Raises:
            InvalidAnswerError: *value* does not match the request's schema.
            UnknownRequestError: The plan has no such request.
            RequestAlreadyAnsweredError: The request has an answer already.
            RequestExpiredError: The request's deadline passed.
            PlanNotWaitingError: The plan waits for nothing.

        """
        await self.manager.has_checkpoints(plan_id)  # validates the id
        request = await self.planner.arespond(plan_id, request_id, value)
        live = self._live.get(plan_id)
        if (live is None or not live.active) and self._accepting:
            await self.resume(plan_id)  # the answer is durable: the run goes on from it
        return request

    async def delete(self, plan_id: str) -> None:
        """Forget a plan and delete its checkpoints (refused while it runs)."""
        exists = await self.manager.has_checkpoints(plan_id)
        live = self._live.get(plan_id)
        if live is not None and live.active:
            raise PlanStateError(plan_id, "is running; cancel it first")
        if not exists and live is None:
            raise CheckpointNotFoundError(None, plan_id)
        if exists:
            await self.manager.delete_plan(plan_id)
        self._live.pop(plan_id, None)
        self._finished.pop(plan_id, None)

    def scrub(self, text: str) -> str:
        """Return *text* without the secrets the service knows (the LLM key, the API tokens)."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def live(self, plan_id: str) -> LivePlan | None:
        """Return the plan's record if this service ran it lately (else its checkpoints tell)."""
        return self._live.get(plan_id)

    def live_plans(self) -> list[LivePlan]:
        """Return the records of the plans this service runs or ran lately, newest first."""
        return sorted(self._live.values(), key=lambda p: p.submitted_at, reverse=True)

    # -- running ----------------------------------------------------------------------------
    async def _start(
        self, plan_id: str, vibe: Vibe, call: Callable[[], Awaitable[ExecutionResult]], *, fresh: bool
    ) -> LivePlan:
        if not self._accepting or self._tg is None:
            raise ServerStoppingError()
        previous = self._live.get(plan_id)
        if previous is not None and previous.active:
            raise PlanStateError(plan_id, "is running already")
        log = previous.log if previous is not None else EventLog()
        live = LivePlan(plan_id, vibe, log, fresh=fresh)
        self._live[plan_id] = live  # from here on, a second submission of the plan is refused
        try:
            await self._write_marker(live)
        except BaseException:
            if previous is not None:
                self._live[plan_id] = previous
            else:
                del self._live[plan_id]
            raise
        self._finished.pop(plan_id, None)
        log.begin()
        self._tg.start_soon(self._run, live, call, name=f"vibe-planner plan {plan_id}")
        return live

    async def _run(self, live: LivePlan, call: Callable[[], Awaitable[ExecutionResult]]) -> None:
        result: ExecutionResult | None = None
        try:
            with live.scope:
                async with self._limiter:
                    live.status = "running"
                    try:
                        result = await call()
                    except VibePlannerError as exc:
                        live.fail(exc, self.scrub)
                    except Exception as exc:
                        logger.error("plan %s: %s: %s", live.plan_id, type(exc).__name__,
                                     self.scrub(str(exc)))
                        live.fail(exc, self.scrub)
            if result is not None:
                live.finish(result)
            elif live.status != "failed":
                live.status = "cancelled"
        finally:
            with anyio.CancelScope(shield=True):
                await self._wait_caught_up()
                live.log.end({"plan_id": live.plan_id, "status": live.status, "error": live.error})
                if not live.stopping:
                    await self._remove_marker(live.plan_id)
                live.finished.set()
                self._retire(live.plan_id)

    def _retire(self, plan_id: str) -> None:
        self._finished[plan_id] = None
        while len(self._finished) > self.keep_finished:
            old, _ = self._finished.popitem(last=False)
            self._live.pop(old, None)

    # -- events -----------------------------------------------------------------------------
    async def _dispatch(self, *, task_status: TaskStatus[None]) -> None:
        async with self.planner.subscribe(buffer=1_000_000) as events:
            self._events = events
            task_status.started()
            async for event in events:
                self._record(event)
                self._processed += 1
                self._caught_up.set()
                self._caught_up = anyio.Event()

    def _record(self, event: ProgressEvent) -> None:
        live = self._live.get(event.plan_id)
        if live is None or not live.active:
            return  # a run this service did not start (the app's own, on the same planner)
        live.progress = {"total": event.total, "completed": event.completed,
                         "running": event.running, "failed": event.failed}
        status = _NODE_STATUS.get(type(event))
        node_id = getattr(event, "node_id", None)
        if status is not None and node_id is not None and live.nodes.get(node_id) not in _FINAL:
            live.nodes[node_id] = status
        if isinstance(event, CheckpointWritten):
            live.checkpoints.append(event.checkpoint_id)
        elif isinstance(event, NodeWaiting):
            live.pending[event.request_id] = {"id": event.request_id, "node_id": event.node_id,
                                              "prompt": event.prompt, "deadline": event.deadline}
        elif isinstance(event, NodeAnswered):
            live.pending.pop(event.request_id, None)
        live.log.append(event_record(event))

    async def _wait_caught_up(self) -> None:
        """Wait until the dispatcher has recorded every event emitted so far."""
        events = self._events
        if events is None:
            return
        target = self._processed + events.statistics().current_buffer_used
        while self._processed < target:
            await self._caught_up.wait()

    # -- markers (restart-resume) ------------------------------------------------------------
    def _marker(self, plan_id: str) -> Path | None:
        return self.state_dir / "running" / f"{plan_id}.json" if self.state_dir is not None else None

    async def _write_marker(self, live: LivePlan) -> None:
        path = self._marker(live.plan_id)
        if path is None:
            return
        data = orjson.dumps({"plan_id": live.plan_id, "vibe": live.vibe.model_dump(mode="json")})

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)

        await anyio.to_thread.run_sync(write)

    async def _remove_marker(self, plan_id: str) -> None:
        path = self._marker(plan_id)
        if path is not None:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def _resume_left_over(self) -> None:
        folder = self.state_dir / "running" if self.state_dir is not None else None
        if folder is None:
            return
        paths = await anyio.to_thread.run_sync(
            lambda: sorted(folder.glob("*.json")) if folder.is_dir() else [])
        for path in paths:
            try:
                data = orjson.loads(await anyio.Path(path).read_bytes())
                await self.submit(Vibe(**data["vibe"]), data["plan_id"])
            except (VibePlannerError, PlanStateError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
                logger.warning("not resuming %s: %s", path.name, exc)
                await anyio.Path(path).unlink(missing_ok=True)
            else:
                logger.info("resumed plan %s, running when the server last stopped", data["plan_id"])
