"""`Worker`: runs the plans queued in a PostgreSQL store, and those of workers that died.

A worker claims plans from the store's queue (`PlanQueue`), up to *concurrency* at once, and
runs each with ``planner.execute_with_resume``: a fresh plan is planned and run, a plan whose
worker died resumes from its latest checkpoint and journal (no planning again, no recorded
node run again). Each run holds its plan's lease and renews it (`open_lease`); a run whose
lease was taken over meanwhile gets `StaleLeaseError` and stops.

Idle, the worker waits for a ``NOTIFY`` (a submission, a plan handed back) or *poll_interval*
seconds, whichever comes first: a dead worker's plans send no notification, so they are
found by polling, within the lease's expiry plus one poll interval. Cancelling `Worker.run`
(the command line does it on SIGTERM) cancels the runs, which write a ``cancelled``
checkpoint, release their leases and hand their plans back to the queue at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from .._exceptions import CheckpointWriteError, PlanLockedError, StoreUnavailableError
from .._metaplanner import MetaPlanner
from ..persistence._postgres_store import PostgresCheckpointStore
from ._queue import Claim, PlanQueue

__all__ = ["Worker"]

logger = logging.getLogger("vibe_planner.workers")
_LISTEN_TICK = 0.5
"""Seconds a wait for a notification blocks its thread: how long a stopping worker may wait."""


class Worker:
    """Runs queued plans from the planner's PostgreSQL store until cancelled.

    Args:
        planner: Runs the plans: its store (``planner.persistence_manager.store``) must be a
            `PostgresCheckpointStore`; its handlers, LLM and settings serve every plan.
        concurrency: Most plans this worker runs at once.
        poll_interval: Most seconds between looks at the queue when no notification comes.
        name: How the queue and the logs name this worker (default ``host:pid:random``).
        max_claims: A plan claimed this many times without finishing (the workers running
            it keep dying, say) is marked failed instead of being run again.

    Example:
        >>> worker = Worker(MetaPlanner(persistence_manager=manager), concurrency=4)

    """

    def __init__(
        self,
        planner: MetaPlanner,
        *,
        concurrency: int = 4,
        poll_interval: float = 5.0,
        name: str | None = None,
        max_claims: int = 20,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be more than 0, got {poll_interval}")
        store = planner.persistence_manager.store
        self.queue = PlanQueue.of(store)
        self._store: PostgresCheckpointStore = self.queue.store
        self._hold: float = self._store.lease_ttl
        self.planner = planner
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.max_claims = max_claims
        self.finished: dict[str, str] = {}
        """How each plan this worker ran ended (``completed``, ``failed``...), by plan id."""
        self._running = 0
        self._wake = anyio.Event()

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, {self._store!r})"

    async def run(self, *, until_idle: bool = False) -> None:
        """Claim and run plans until cancelled (or, with *until_idle*, until none is left).

        "None left" means nothing queued or running in the whole queue, and nothing running
        here: a worker waits while its peers run plans, in case one of them dies.
        """
        slots = anyio.Semaphore(self.concurrency)
        hold = self._hold  # a claim lasts as long as a lease
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen, name=f"vibe_planner worker {self.name} listener")
            while True:
                await slots.acquire()
                self._wake = anyio.Event()  # before looking: no wake-up is lost after the look
                claim = await self._claim(hold)
                if claim is not None:
                    self._running += 1
                    tg.start_soon(self._run_one, claim, slots, name=f"vibe_planner run of {claim.plan_id}")
                    continue
                slots.release()
                if until_idle and self._running == 0 and await self._idle():
                    tg.cancel_scope.cancel()
                    return
                with anyio.move_on_after(self.poll_interval):
                    await self._wake.wait()

    async def serve(self, *, until_idle: bool = False,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """`run` until SIGTERM or SIGINT, then stop: runs cancelled, leases released, plans handed back.

        Started with ``task_group.start``, it reports once the signals are caught.
        """
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_signal, signals, tg.cancel_scope, name="vibe_planner worker signals")
                task_status.started()
                await self.run(until_idle=until_idle)
                tg.cancel_scope.cancel()

    async def _claim(self, hold: float) -> Claim | None:
        try:
            return await self.queue.claim(self.name, hold)
        except (StoreUnavailableError, CheckpointWriteError) as exc:
            logger.warning("worker %s: cannot claim work: %s", self.name, exc)
            return None

    async def _idle(self) -> bool:
        try:
            return await self.queue.unfinished() == 0
        except StoreUnavailableError:
            return False

    async def _run_one(self, claim: Claim, slots: anyio.Semaphore) -> None:
        try:
            state, error = await self._execute(claim)
            if state is not None:
                self.finished[claim.plan_id] = state
                await self._finish(claim, state, error)
        finally:
            self._running -= 1
            slots.release()
            self._wake.set()

    async def _execute(self, claim: Claim) -> tuple[str | None, str | None]:
        """Run a claimed plan; return its final queue state and error (``None``: not final)."""
        plan_id = claim.plan_id
        if claim.claims > self.max_claims:
            return "failed", f"given up: claimed {claim.claims - 1} times without finishing"
        logger.info("worker %s: running plan %s (claim %d)", self.name, plan_id, claim.claims)
        try:
            result = await self.planner.execute_with_resume(claim.vibe, plan_id=plan_id,
                                                            metadata=claim.metadata)
        except PlanLockedError as exc:  # StaleLeaseError included: someone else runs it now
            logger.warning("worker %s: plan %s stopped, not ours any more: %s", self.name, plan_id, exc)
            return None, None
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._hand_back(plan_id)
            raise
        except (StoreUnavailableError, CheckpointWriteError) as exc:
            logger.warning("worker %s: plan %s interrupted, to be taken up again: %s",
                           self.name, plan_id, exc)
            return None, None
        except Exception as exc:
            logger.warning("worker %s: plan %s failed: %s: %s", self.name, plan_id, type(exc).__name__, exc)
            return "failed", f"{type(exc).__name__}: {exc}"
        logger.info("worker %s: plan %s %s", self.name, plan_id, result.status)
        return result.status, None

    async def _finish(self, claim: Claim, state: str, error: str | None) -> None:
        try:
            await self.queue.finish(claim.plan_id, self.name, state, error)
        except (StoreUnavailableError, CheckpointWriteError) as exc:
            logger.warning("worker %s: cannot record the end of plan %s: %s", self.name, claim.plan_id, exc)

    async def _hand_back(self, plan_id: str) -> None:
        try:
            await self.queue.hand_back(plan_id, self.name)
        except (StoreUnavailableError, CheckpointWriteError) as exc:
            logger.warning("worker %s: cannot hand plan %s back: %s", self.name, plan_id, exc)

    # -- LISTEN ---------------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Wake the claim loop on every notification of the queue's channel; reconnect on errors."""
        while True:
            try:
                conn = await anyio.to_thread.run_sync(self._store.connect)
            except StoreUnavailableError as exc:
                logger.warning("worker %s: cannot listen for new plans (polling meanwhile): %s",
                               self.name, exc)
                await anyio.sleep(self.poll_interval)
                continue
            try:
                await anyio.to_thread.run_sync(conn.execute, f'LISTEN "{self.queue.channel}"')
                self._wake.set()  # anything submitted before LISTEN took effect
                while True:
                    if await anyio.to_thread.run_sync(_notified, conn, _LISTEN_TICK):
                        self._wake.set()
            except Exception as exc:  # the connection broke: polling goes on, listen again
                logger.warning("worker %s: listening stopped (reconnecting): %s: %s", self.name,
                               type(exc).__name__, self._store.redact(str(exc)))
                await anyio.sleep(self.poll_interval)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(conn.close)


async def _cancel_on_signal(signals: AsyncIterator[int], scope: anyio.CancelScope) -> None:
    async for signum in signals:
        logger.info("worker: %s received, stopping", signal.Signals(signum).name)
        scope.cancel()
        return


def _notified(conn: Any, timeout: float) -> bool:
    """Wait up to *timeout* seconds for a notification on *conn* (worker thread)."""
    for _ in conn.notifies(timeout=timeout, stop_after=1):
        return True
    return False
