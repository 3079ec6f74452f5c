"""`open_lease`: hold a plan's lease for a block, renewing it while the block runs.

Every run takes its plan's lease this way, whatever the store: with files it is the flock
(which lasts as long as the process: nothing to renew), with PostgreSQL a lease that expires
unless renewed. Here a task renews it every third of `CheckpointStore.lease_ttl`. If a renewal
is refused (`StaleLeaseError`: the lease expired and another worker took the plan over), or
the store stays unreachable until the lease would have expired, the block is cancelled and
the error raised: the run stops, and its late writes would have been refused anyway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio

from .._exceptions import PlanLockedError, StoreUnavailableError
from ._manager import WorkflowPersistenceManager
from ._store import Lease

__all__ = ["open_lease"]

logger = logging.getLogger("vibe_planner")


@contextlib.asynccontextmanager
async def open_lease(manager: WorkflowPersistenceManager | None, plan_id: str) -> AsyncIterator[Lease | None]:
    """Take the plan's lease (`PlanLockedError` if busy), renew it, release it on the way out.

    With *manager* ``None`` (a run that writes nothing) no lease is taken and ``None`` is given.
    """
    if manager is None:
        yield None
        return
    lease = await manager.acquire(plan_id)
    try:
        ttl = manager.store.lease_ttl
        if ttl is None:
            yield lease
            return
        lost: list[Exception] = []
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as body:
                tg.start_soon(_keep_renewed, manager, lease, ttl, body, lost,
                              name=f"vibe_planner lease renewal of {plan_id}")
                try:
                    yield lease
                except Exception as exc:
                    # Raised after the task group, so that it comes out as itself, not in a group.
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if lost:
            raise lost[0]
    finally:
        with anyio.CancelScope(shield=True):
            await manager.release(lease)


async def _keep_renewed(
    manager: WorkflowPersistenceManager, lease: Lease, ttl: float, body: anyio.CancelScope,
    lost: list[Exception],
) -> None:
    """Renew *lease* every ``ttl / 3`` s; cancel *body* once it is lost."""
    expires = anyio.current_time() + ttl  # a lower bound: the store counted from before this
    while True:
        await anyio.sleep(ttl / 3)
        asked = anyio.current_time()
        try:
            lease = await manager.renew(lease)
        except PlanLockedError as exc:  # StaleLeaseError: taken over
            logger.warning("plan %s: lease lost, stopping the run: %s", lease.plan_id, exc)
            lost.append(exc)
            body.cancel()
            return
        except (StoreUnavailableError, OSError) as exc:
            if anyio.current_time() < expires:
                logger.warning("plan %s: could not renew the lease (will retry): %s", lease.plan_id, exc)
                continue
            logger.warning("plan %s: the lease expired unrenewed, stopping the run: %s", lease.plan_id, exc)
            lost.append(exc)
            body.cancel()
            return
        expires = asked + ttl
