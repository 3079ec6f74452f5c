"""`MemoryCheckpointStore`: checkpoints in a dict, for tests and for embedding.

Nothing survives the process. Leases are exclusive within the process (there is nobody else),
and their fencing tokens count up from 1 in each store. Encoding and parsing still run in a
worker thread, so a big checkpoint does not stall the event loop; the store's own state is
changed under a lock, so it can be shared by several event loops.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    PlanLockedError,
    UnsafeCheckpointFolderError,
)
from .._ids import check_checkpoint_id, check_plan_id, checkpoint_sequence
from ._store import CheckpointStore, Latest, Lease, Stored, WriteBatch

__all__ = ["MemoryCheckpointStore"]

_T = TypeVar("_T")
_J = TypeVar("_J")


@dataclass
class _Plan:
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    journals: dict[str, bytes] = field(default_factory=dict)


class MemoryCheckpointStore(CheckpointStore):
    """Checkpoints, journals and leases held in memory.

    Example:
        >>> manager = WorkflowPersistenceManager(store=MemoryCheckpointStore())

    """

    def __init__(self) -> None:
        self._plans: dict[str, _Plan] = {}
        self._leases: dict[str, Lease] = {}
        self._tokens = itertools.count(1)
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryCheckpointStore({len(self._plans)} plans)"

    def describe(self, plan_id: str, name: str | None = None) -> str:
        return f"memory:/{plan_id}" if name is None else f"memory:/{plan_id}/{name}"

    # -- reading -------------------------------------------------------------------------------
    async def plan_ids(self) -> list[str]:
        with self._mutex:
            return sorted(p for p, plan in self._plans.items() if plan.checkpoints or plan.journals)

    async def checkpoint_ids(self, plan_id: str) -> list[str]:
        check_plan_id(plan_id)
        with self._mutex:
            plan = self._plans.get(plan_id)
            return list(plan.checkpoints) if plan is not None else []

    async def read_checkpoint(self, plan_id: str, checkpoint_id: str, parse: Callable[[bytes], _T]) -> _T:
        check_plan_id(plan_id)
        check_checkpoint_id(checkpoint_id)
        raw = self._snapshots(plan_id).get(checkpoint_id)
        if raw is None:
            raise CheckpointNotFoundError(checkpoint_id, plan_id)
        return await anyio.to_thread.run_sync(parse, raw)

    async def read_checkpoints(self, plan_id: str, parse: Callable[[str, bytes], _T]) -> list[Stored[_T]]:
        check_plan_id(plan_id)
        items = self._snapshots(plan_id)
        return await anyio.to_thread.run_sync(_parse_all, items, parse)

    async def read_many(
        self, plan_id: str, checkpoint_ids: Sequence[str], parse: Callable[[str, bytes], _T]
    ) -> list[Stored[_T]]:
        check_plan_id(plan_id)
        snapshots = self._snapshots(plan_id)
        items = {i: snapshots[i] for i in checkpoint_ids if i in snapshots}
        return await anyio.to_thread.run_sync(_parse_all, items, parse)

    async def read_journals(self, plan_id: str, parse: Callable[[str, bytes], _J]) -> list[Stored[_J]]:
        check_plan_id(plan_id)
        with self._mutex:
            plan = self._plans.get(plan_id)
            items = dict(sorted(plan.journals.items())) if plan is not None else {}
        return await anyio.to_thread.run_sync(_parse_all, items, parse)

    async def read_latest(
        self,
        plan_id: str,
        parse: Callable[[str, bytes], _T],
        parse_journal: Callable[[str, bytes], _J] | None = None,
    ) -> Latest[_T, _J] | None:
        check_plan_id(plan_id)
        with self._mutex:  # one consistent view: the snapshot and the journals of one moment
            plan = self._plans.get(plan_id)
            if plan is None or not plan.checkpoints:
                return None
            newest = max(plan.checkpoints, key=checkpoint_sequence)
            raw = plan.checkpoints[newest]
            journals = dict(sorted(plan.journals.items()))

        def parse_both() -> Latest[_T, _J]:
            parsed = [] if parse_journal is None else _parse_all(journals, parse_journal)
            return Latest(newest, parse(newest, raw), parsed)

        return await anyio.to_thread.run_sync(parse_both)

    # -- leases --------------------------------------------------------------------------------
    async def acquire_lease(self, plan_id: str) -> Lease:
        check_plan_id(plan_id)
        with self._mutex:
            held = self._leases.get(plan_id)
            if held is not None:
                raise PlanLockedError(plan_id, Path(self.describe(plan_id, ".lock")),
                                      f"{held.holder} (lease {held.token})")
            lease = Lease(plan_id, next(self._tokens), f"{self!r} (this process)")
            self._leases[plan_id] = lease
            return lease

    async def renew_lease(self, lease: Lease) -> Lease:
        with self._mutex:
            self._check_lease(lease)
        return lease

    async def release_lease(self, lease: Lease) -> None:
        with self._mutex:
            if self._leases.get(lease.plan_id) is lease:
                del self._leases[lease.plan_id]

    # -- writing -------------------------------------------------------------------------------
    async def commit(self, lease: Lease, batch: WriteBatch) -> None:
        # In the file store's order, with its failure modes: an append stays made when the
        # snapshot's encoding fails after it.
        with self._mutex:
            self._check_lease(lease)
        if batch.journal:
            data = batch.journal
            journal = await anyio.to_thread.run_sync(data) if callable(data) else data
            with self._mutex:
                self._check_lease(lease)
                plan = self._plans.setdefault(lease.plan_id, _Plan())
                plan.journals[batch.run_id] = plan.journals.get(batch.run_id, b"") + journal
        snapshot = await anyio.to_thread.run_sync(batch.snapshot.encode) if batch.snapshot else None
        with self._mutex:
            self._check_lease(lease)
            plan = self._plans.setdefault(lease.plan_id, _Plan())
            if batch.snapshot is not None and snapshot is not None:
                checkpoint_id = batch.snapshot.checkpoint_id
                if checkpoint_id in plan.checkpoints:
                    where = Path(self.describe(lease.plan_id, checkpoint_id + ".json"))
                    raise CheckpointWriteError(where, "a checkpoint with this name already exists")
                plan.checkpoints[checkpoint_id] = snapshot
            if batch.truncate_journal and batch.run_id in plan.journals:
                plan.journals[batch.run_id] = b""
            _delete(plan, batch.delete_checkpoints, batch.delete_journals)

    async def delete_checkpoint(self, plan_id: str, checkpoint_id: str) -> None:
        check_plan_id(plan_id)
        with self._mutex:
            plan = self._plans.get(plan_id)
            if plan is None or plan.checkpoints.pop(checkpoint_id, None) is None:
                raise CheckpointNotFoundError(checkpoint_id, plan_id)

    async def prune(self, plan_id: str, checkpoint_ids: Sequence[str], run_ids: Sequence[str]) -> None:
        check_plan_id(plan_id)
        with self._mutex:
            plan = self._plans.get(plan_id)
            if plan is not None:
                _delete(plan, checkpoint_ids, run_ids)

    async def delete_plan(self, lease: Lease) -> None:
        with self._mutex:
            self._check_lease(lease)
            self._plans.pop(lease.plan_id, None)

    # -- internals -----------------------------------------------------------------------------
    def _snapshots(self, plan_id: str) -> dict[str, bytes]:
        with self._mutex:
            plan = self._plans.get(plan_id)
            return dict(plan.checkpoints) if plan is not None else {}

    def _check_lease(self, lease: Lease) -> None:
        """Refuse a lease that is not the plan's current one (called under the mutex)."""
        current = self._leases.get(lease.plan_id)
        if current is not lease:
            holder = "nobody" if current is None else f"{current.holder} (lease {current.token})"
            raise PlanLockedError(lease.plan_id, Path(self.describe(lease.plan_id, ".lock")),
                                  f"{holder}; lease {lease.token} is no longer held")


def _parse_all(items: dict[str, bytes], parse: Callable[[str, bytes], _T]) -> list[Stored[_T]]:
    found = []
    for key, raw in items.items():
        try:
            found.append(Stored(key, len(raw), parse(key, raw)))
        except (CheckpointCorruptError, UnsafeCheckpointFolderError) as exc:
            found.append(Stored(key, len(raw), None, exc))
    return found


def _delete(plan: _Plan, checkpoint_ids: Sequence[str], run_ids: Sequence[str]) -> None:
    for checkpoint_id in checkpoint_ids:
        plan.checkpoints.pop(checkpoint_id, None)
    for run_id in run_ids:
        plan.journals.pop(run_id, None)
