"""The `CheckpointStore` protocol: where checkpoints and journals live, in the domain's words.

A store keeps, per plan, *snapshots* (checkpoint documents, keyed by checkpoint id) and
*journals* (one append-only byte log per run, keyed by run id), and grants *leases*: one
holder per plan at a time, with a fencing token that grows with every grant.

Everything is async, and a store never does its work on the event loop: the file store makes
one worker-thread hop per call, the memory store one for the parsing or encoding it is given,
a database store one transaction. Documents are encoded and decoded by callables the
manager hands over (``encode``, ``parse``), which the store calls off the loop, inside that
one hop: the codec stays the one owner of the format, and the work stays off the loop.

Writes are batched: `CheckpointStore.commit` takes a `WriteBatch` (journal append, snapshot,
journal truncation, deletions, in that order) so a checkpoint costs one hop or one
transaction. Reads that a resume or a listing needs come whole (`read_latest`: the newest
snapshot and every journal of the plan; `read_checkpoints`: every snapshot of a plan).

Identifiers reaching a store are validated (`check_plan_id`, `check_checkpoint_id`). Every
store passes tests/test_store_conformance.py; see docs/checkpoints.md, "Stores".
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .._exceptions import CheckpointError, CheckpointNotFoundError
from .._ids import checkpoint_sequence

__all__ = ["CheckpointStore", "Latest", "Lease", "SnapshotWrite", "Stored", "WriteBatch", "journal_name"]

_T = TypeVar("_T")
_J = TypeVar("_J")


def journal_name(run_id: str) -> str:
    """Return the name of a run's journal, as `CheckpointStore.describe` takes it."""
    return f"journal-{run_id}.jsonl"


@dataclass(frozen=True, eq=False)
class Lease:
    """The right to write a plan, granted by `CheckpointStore.acquire_lease`.

    Stores refuse (`PlanLockedError`) writes under a lease that was released or superseded.
    """

    plan_id: str
    token: int
    """Fencing token: greater than that of every earlier grant for this plan in this store
    (see each store for how far the guarantee reaches)."""
    holder: str
    """Who holds it, for messages (``pid=… host=…``)."""
    handle: Any = field(default=None, repr=False)
    """The store's own state for the lease (the file store's flock)."""


@dataclass(frozen=True, slots=True)
class SnapshotWrite:
    """A snapshot to write: its id, and the callable that makes its bytes (called off the loop)."""

    checkpoint_id: str
    encode: Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Writes for one plan applied by one `CheckpointStore.commit`, in this order.

    1. ``journal`` (bytes, or a callable making them, called off the loop) is appended to the
       journal of ``run_id`` (created if needed);
    2. ``snapshot`` is written (a new id: an existing one is an error);
    3. if ``truncate_journal``, the journal of ``run_id`` is emptied;
    4. the checkpoints ``delete_checkpoints`` and the journals of ``delete_journals`` (run ids)
       are deleted; missing ones are fine.

    A step runs only once the previous one is durable. If a step fails, the later ones do not
    happen (a transactional store may also undo the earlier ones).
    """

    run_id: str
    journal: bytes | Callable[[], bytes] = b""
    snapshot: SnapshotWrite | None = None
    truncate_journal: bool = False
    delete_checkpoints: Sequence[str] = ()
    delete_journals: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Stored(Generic[_T]):
    """One snapshot or journal as read by a bulk read: parsed, or why it could not be."""

    name: str
    """The checkpoint id (snapshots) or the run id (journals)."""
    size: int
    """Its size in bytes."""
    value: _T | None
    error: CheckpointError | None = None
    """`CheckpointCorruptError` or `UnsafeCheckpointFolderError` raised reading or parsing it."""


@dataclass(frozen=True, slots=True)
class Latest(Generic[_T, _J]):
    """What `CheckpointStore.read_latest` returns: the newest snapshot and the plan's journals."""

    checkpoint_id: str
    checkpoint: _T
    journals: list[Stored[_J]]


class CheckpointStore(ABC):
    """Snapshots, journals and leases of plans.

    Implement the abstract methods; the others have defaults built on them that a store may
    override to save round trips. All must be safe to call from several tasks at once.
    """

    lease_ttl: float | None = None
    """Seconds a lease lasts unless renewed; ``None`` (files, memory) when it lasts as long as
    its holder. A run renews its lease every third of this (see `open_lease`)."""

    @abstractmethod
    def describe(self, plan_id: str, name: str | None = None) -> str:
        """Return where a plan, or one of its files, lives: for messages; no I/O.

        *name* is ``<checkpoint_id>.json`` or ``journal-<run_id>.jsonl``. The result must end
        with ``/<plan_id>`` or ``/<plan_id>/<name>``: errors carry it as a `Path`.
        """

    # -- reading -------------------------------------------------------------------------------
    @abstractmethod
    async def plan_ids(self) -> list[str]:
        """Return the ids of the plans that have anything stored, sorted."""

    @abstractmethod
    async def checkpoint_ids(self, plan_id: str) -> list[str]:
        """Return the checkpoint ids of a plan, in no particular order."""

    @abstractmethod
    async def read_checkpoint(self, plan_id: str, checkpoint_id: str, parse: Callable[[bytes], _T]) -> _T:
        """Return ``parse(bytes)`` of a snapshot (`CheckpointNotFoundError` if there is none)."""

    @abstractmethod
    async def read_checkpoints(
        self, plan_id: str, parse: Callable[[str, bytes], _T]
    ) -> list[Stored[_T]]:
        """Return every snapshot of a plan, ``parse(checkpoint_id, bytes)`` of each.

        A damaged or unsafe one is returned with `Stored.error` set; one deleted meanwhile is
        left out.
        """

    @abstractmethod
    async def read_journals(self, plan_id: str, parse: Callable[[str, bytes], _J]) -> list[Stored[_J]]:
        """Return every journal of a plan, ``parse(run_id, bytes)`` of each, by run id."""

    async def read_latest(
        self,
        plan_id: str,
        parse: Callable[[str, bytes], _T],
        parse_journal: Callable[[str, bytes], _J] | None = None,
    ) -> Latest[_T, _J] | None:
        """Return the snapshot of highest sequence, parsed, with every journal of the plan.

        ``None`` if the plan has no snapshot; no journals without *parse_journal*. A damaged
        newest snapshot raises its error (no fallback to an older one). This default makes
        three calls; the file store makes one hop.
        """
        for _ in range(10):  # the newest may be pruned between listing and reading: list again
            ids = await self.checkpoint_ids(plan_id)
            if not ids:
                return None
            newest = max(ids, key=checkpoint_sequence)
            try:
                checkpoint = await self.read_checkpoint(plan_id, newest, functools.partial(parse, newest))
            except CheckpointNotFoundError:
                continue
            journals = [] if parse_journal is None else await self.read_journals(plan_id, parse_journal)
            return Latest(newest, checkpoint, journals)
        raise CheckpointError(f"checkpoints of plan {plan_id!r} keep vanishing while being read")

    async def find_plans(self, checkpoint_id: str) -> list[str]:
        """Return the ids of the plans holding a checkpoint *checkpoint_id* (normally one)."""
        return [p for p in await self.plan_ids() if checkpoint_id in await self.checkpoint_ids(p)]

    # -- leases --------------------------------------------------------------------------------
    @abstractmethod
    async def acquire_lease(self, plan_id: str) -> Lease:
        """Take the plan's lease without waiting, or raise `PlanLockedError` naming the holder."""

    @abstractmethod
    async def renew_lease(self, lease: Lease) -> Lease:
        """Extend a lease (a no-op where a lease lasts as long as its holder); return it.

        Raises `PlanLockedError` if the lease is no longer held.
        """

    @abstractmethod
    async def release_lease(self, lease: Lease) -> None:
        """Give a lease up (idempotent)."""

    # -- writing -------------------------------------------------------------------------------
    @abstractmethod
    async def commit(self, lease: Lease, batch: WriteBatch) -> None:
        """Apply *batch* to the lease's plan (see `WriteBatch` for the order and guarantees).

        Raises `PlanLockedError` if *lease* is not the plan's current lease, and
        `CheckpointWriteError` (or another `OSError`) if the storage fails.
        """

    async def write_snapshot(self, lease: Lease, checkpoint_id: str, data: bytes) -> None:
        """Write one snapshot (a batch of one)."""
        await self.commit(lease, WriteBatch("", snapshot=SnapshotWrite(checkpoint_id, lambda: data)))

    async def append_journal(self, lease: Lease, run_id: str, data: bytes) -> None:
        """Append *data* to a run's journal (a batch of one)."""
        await self.commit(lease, WriteBatch(run_id, journal=data))

    @abstractmethod
    async def delete_checkpoint(self, plan_id: str, checkpoint_id: str) -> None:
        """Delete one snapshot; `CheckpointNotFoundError` if there is none with this id."""

    @abstractmethod
    async def prune(self, plan_id: str, checkpoint_ids: Sequence[str], run_ids: Sequence[str]) -> None:
        """Delete these snapshots and the journals of these runs; missing ones are fine."""

    @abstractmethod
    async def delete_plan(self, lease: Lease) -> None:
        """Delete everything of the lease's plan; anyone reading meanwhile sees all or nothing."""
