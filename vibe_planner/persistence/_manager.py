"""`WorkflowPersistenceManager`: naming, sequencing, retention and loading of checkpoints.

The manager speaks to a `CheckpointStore` (files by default) and owns everything the store
does not: checkpoint ids and sequence numbers (allocated on the event loop, by the lease
holder), the codec (handed to the store as ``encode``/``parse`` callables it runs off the
loop), retention (``keep_last``, computed before a write so it goes in the same batch) and
what a resume starts from (the latest snapshot plus the journals written after it). The
rules of retention live in `_retention`, and the reading of summaries and resume points in
`_reading`; this class sequences them against the store.

Every method is async. It can be used on its own (to list, inspect, prune or delete
checkpoints) or through `MetaPlanner`, which also uses it to record runs (see `RunRecorder`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    PlanLockedError,
)
from .._ids import check_checkpoint_id, check_plan_id, checkpoint_sequence
from .._models import Checkpoint, CheckpointInfo, ResumePoint
from ._chain import BASE_RATIO, Link
from ._chain_reader import chain_tips, chains_kept, read_chain
from ._codec import JournalRead, encode_journal, journal_entries
from ._compression import Compression, compressor
from ._file_store import FileCheckpointStore
from ._reading import (
    Document,
    Restored,
    corrupt,
    decode_journal_item,
    journal_after,
    parser,
    plan_order,
    summaries,
)
from ._retention import Held, RunIds, dead_journals, forget, journal_headers, newest_first
from ._store import CheckpointStore, Latest, Lease, SnapshotWrite, Stored, WriteBatch, journal_name

__all__ = ["Restored", "WorkflowPersistenceManager", "journal_name"]


class WorkflowPersistenceManager:
    """Reads and writes the checkpoints of every plan in one store.

    Args:
        checkpoint_dir: Folder holding one sub-folder per plan (created when first needed),
            when no *store* is given.
        keep_last: If set, after each checkpoint write only the newest *keep_last* checkpoints
            of that plan are kept (and journals no kept checkpoint refers to are removed).
        store: Where checkpoints live; defaults to a `FileCheckpointStore` of *checkpoint_dir*.
        compression: ``"gzip"`` or ``"zstd"`` to compress checkpoint documents (see
            `Compression`); off by default. Any manager reads any mix of them.
        base_ratio: A run's snapshot is a full *base* once the deltas written since the last
            base add up to this many times its size (3 by default); ``0`` makes every snapshot
            a base. See docs/checkpoints.md, "File format".

    Example:
        >>> manager = WorkflowPersistenceManager(checkpoint_dir=".vibe_checkpoints", keep_last=10)

    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] = ".vibe_checkpoints",
        *,
        keep_last: int | None = None,
        store: CheckpointStore | None = None,
        compression: Compression | None = None,
        base_ratio: float = BASE_RATIO,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        if not base_ratio >= 0:
            raise ValueError(f"base_ratio must be 0 or more, got {base_ratio}")
        self.store: CheckpointStore = store or FileCheckpointStore(checkpoint_dir)
        self.keep_last = keep_last
        self._compress = compressor(compression)  # ValueError now if it cannot be done
        self.compression = compression
        self.base_ratio = base_ratio
        # Run ids of checkpoints seen lately (retention needs them): a bounded cache, not a
        # record of every checkpoint this manager ever touched.
        self._run_of = RunIds()
        self._base_of = RunIds()  # checkpoint id -> its chain's base (itself for a base)
        self._held: dict[str, Held] = {}

    def __repr__(self) -> str:
        return f"WorkflowPersistenceManager({self.store.describe('').rstrip('/')!r})"

    # -- reading ----------------------------------------------------------------------------
    async def list_checkpoints(self, plan_id: str | None = None) -> list[CheckpointInfo]:
        """Return summaries of the checkpoints of one plan (or all plans), newest first.

        "Newest" follows the sequence numbers, never the clocks: a plan's checkpoints come in
        descending `CheckpointInfo.sequence`, so the first one is what `latest` returns even if
        the wall clock stepped back between runs. With all plans, each plan's checkpoints stay
        together, and plans come most recently active first (the latest ``created_at`` among
        their checkpoints; plans whose files are all unreadable last; ties by plan id).

        Damaged files are listed too, with `CheckpointInfo.error` saying what is wrong (as are
        files in an unsafe folder, see `UnsafeCheckpointFolderError`).
        """
        if plan_id is not None:
            check_plan_id(plan_id)
        plans = [plan_id] if plan_id is not None else await self.store.plan_ids()
        groups = []
        for plan in plans:
            infos = await summaries(self.store, self._run_of, plan)
            if infos:
                infos.sort(key=lambda i: i.sequence, reverse=True)
                groups.append(infos)
        groups.sort(key=plan_order)
        return [info for group in groups for info in group]

    async def has_checkpoints(self, plan_id: str) -> bool:
        """Whether the plan has at least one checkpoint (damaged ones count)."""
        check_plan_id(plan_id)
        return bool(await self.store.checkpoint_ids(plan_id))

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """Load and verify one checkpoint by id, whatever plan it belongs to."""
        check_checkpoint_id(checkpoint_id)
        plan_id = await self._find_plan(checkpoint_id)
        return await self._read(plan_id, checkpoint_id, Checkpoint)

    async def latest(self, plan_id: str) -> Checkpoint | None:
        """Return the newest checkpoint of a plan, or ``None`` if it has none.

        Raises `CheckpointCorruptError` if the newest file is damaged (older ones are not
        consulted: falling back silently would resume from the wrong place).
        """
        check_plan_id(plan_id)
        found = await self._latest(Checkpoint, plan_id, with_journals=False)
        return None if found is None else found[0]

    async def restore(
        self, plan_id: str, checkpoint_id: str | None = None
    ) -> Restored[Checkpoint] | None:
        """Return the state a resume starts from, or ``None`` if the plan has no checkpoint.

        Without *checkpoint_id* this is the latest checkpoint plus its run's journal; with
        one, exactly that checkpoint (journal records may postdate it, so none are applied).
        """
        return await self._restore(Checkpoint, plan_id, checkpoint_id)

    async def resume_point(
        self, plan_id: str, checkpoint_id: str | None = None
    ) -> Restored[ResumePoint] | None:
        """Like `restore`, with node results kept as records (what `MetaPlanner` resumes from)."""
        return await self._restore(ResumePoint, plan_id, checkpoint_id)

    async def verify(self, plan_id: str | None = None) -> list[CheckpointCorruptError]:
        """Check every checkpoint and journal (of one plan or all); return the problems found.

        Nothing is modified. A journal with a torn last record is reported too.
        """
        if plan_id is not None:
            check_plan_id(plan_id)
        problems: list[CheckpointCorruptError] = []
        for plan in [plan_id] if plan_id is not None else await self.store.plan_ids():
            parse = self._parser(plan, Checkpoint)
            links = []
            for item in await self.store.read_checkpoints(plan, parse):
                problems.extend(corrupt(item))
                if isinstance(item.value, Link):
                    links.append(item.value)
            seen = {(p.path, p.reason) for p in problems}
            for tip in chain_tips(links):  # reading the last delta of a chain checks all of it
                try:
                    await read_chain(self.store, Checkpoint, plan, tip)
                except CheckpointCorruptError as exc:
                    if (exc.path, exc.reason) not in seen:
                        seen.add((exc.path, exc.reason))
                        problems.append(exc)
            for journal in await self.store.read_journals(plan, decode_journal_item):
                problems.extend(corrupt(journal))
                if journal.value is not None and journal.value.problem is not None:
                    path = Path(self.store.describe(plan, journal_name(journal.name)))
                    problems.append(CheckpointCorruptError(path, journal.value.problem))
        return problems

    # -- deleting ---------------------------------------------------------------------------
    async def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete one checkpoint; `CheckpointNotFoundError` if there is none with this id."""
        check_checkpoint_id(checkpoint_id)
        plan_id = await self._find_plan(checkpoint_id)
        await self.store.delete_checkpoint(plan_id, checkpoint_id)
        self._forget(plan_id, [checkpoint_id], [])

    async def prune(self, plan_id: str, keep_last: int) -> list[str]:
        """Delete all but the newest *keep_last* checkpoints of a plan; return the deleted ids."""
        check_plan_id(plan_id)
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        doomed, kept = await self._chains_kept(
            plan_id, *newest_first(await self.store.checkpoint_ids(plan_id), keep_last))
        for checkpoint_id in doomed:
            self._run_of.pop(checkpoint_id, None)
        journals = await journal_headers(self.store, plan_id)
        dead = await dead_journals(self.store, self._run_of, plan_id, kept, journals)
        await self.store.prune(plan_id, doomed, dead)
        self._forget(plan_id, doomed, dead)
        return doomed

    async def delete_plan(self, plan_id: str) -> None:
        """Delete every checkpoint and journal of a plan. Refused while the plan is running."""
        check_plan_id(plan_id)
        lease = await self.store.acquire_lease(plan_id)
        try:
            await self.store.delete_plan(lease)
        finally:
            with anyio.CancelScope(shield=True):
                await self.store.release_lease(lease)

    # -- writing (used by RunRecorder and MetaPlanner) --------------------------------------
    async def acquire(self, plan_id: str) -> Lease:
        """Take the plan's lease (`PlanLockedError` if busy) and learn its sequence counter."""
        check_plan_id(plan_id)
        if plan_id in self._held:
            where = Path(self.store.describe(plan_id, ".lock"))
            raise PlanLockedError(plan_id, where, f"pid={os.getpid()} (this process)")
        lease = await self.store.acquire_lease(plan_id)
        try:
            ids = await self.store.checkpoint_ids(plan_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.release_lease(lease)
            raise
        if plan_id in self._held:  # another task of this process got there meanwhile
            with anyio.CancelScope(shield=True):
                await self.store.release_lease(lease)
            raise PlanLockedError(plan_id, Path(self.store.describe(plan_id, ".lock")),
                                  f"pid={os.getpid()} (this process)")
        sequence = max((checkpoint_sequence(i) for i in ids), default=0) + 1
        self._held[plan_id] = Held(lease, sequence, set(ids))
        return lease

    def held_lease(self, plan_id: str) -> Lease | None:
        """Return the lease this manager holds on a plan (while a run of it goes on), if any.

        Its fencing token is what a handler passes to an outside system that checks tokens.
        """
        held = self._held.get(plan_id)
        return held.lease if held is not None else None

    async def renew(self, lease: Lease) -> Lease:
        """Renew a lease taken with `acquire` (see `CheckpointStore.renew_lease`)."""
        renewed = await self.store.renew_lease(lease)
        held = self._held.get(lease.plan_id)
        if held is not None and held.lease is lease:
            held.lease = renewed
        return renewed

    async def release(self, lease: Lease) -> None:
        """Release a lease taken with `acquire`."""
        held = self._held.get(lease.plan_id)
        if held is not None and held.lease is lease:
            del self._held[lease.plan_id]
        await self.store.release_lease(lease)

    async def write(
        self,
        plan_id: str,
        run_id: str,
        records: list[dict[str, Any]] | None = None,
        *,
        resumed_from: str | None = None,
        snapshot: Callable[[str, int], bytes] | None = None,
        truncate_journal: bool = False,
        base: str | None = None,
    ) -> str | None:
        """Write one batch for a plan whose lease this manager holds; return the snapshot's id.

        In order: *records* are appended to the run's journal (after a header naming
        *resumed_from*, if given), then the snapshot ``snapshot(checkpoint_id, sequence)`` is
        written, then (if *truncate_journal*) the journal is emptied, then what ``keep_last``
        no longer keeps is deleted. The id and sequence are allocated here, on the loop; the
        encoding runs off it, in the store's one thread hop (or transaction). *base* is the
        base of the snapshot's chain (``None``: the snapshot is a base).
        """
        held = self._held.get(plan_id)
        if held is None:
            raise RuntimeError(f"writing plan {plan_id!r} without its lease: call acquire first")
        checkpoint_id: str | None = None
        write: SnapshotWrite | None = None
        if snapshot is not None:
            sequence, held.next_sequence = held.next_sequence, held.next_sequence + 1
            checkpoint_id = f"cp-{sequence:08d}-{secrets.token_hex(6)}"
            write = SnapshotWrite(checkpoint_id, _bind(snapshot, checkpoint_id, sequence, self._compress))
            self._base_of[checkpoint_id] = base or checkpoint_id
        doomed, dead = await self._retention(held, run_id, checkpoint_id)
        batch = WriteBatch(
            run_id, journal=_journal_bytes(run_id, records, resumed_from) if records else b"",
            snapshot=write, truncate_journal=truncate_journal and write is not None,
            delete_checkpoints=doomed, delete_journals=dead,
        )
        await self._commit(held, batch)
        if records and held.journals is not None and run_id not in held.runs:
            held.journals[run_id] = _header(run_id, resumed_from)
        if records:
            held.runs.add(run_id)
        if checkpoint_id is not None:
            held.checkpoints.add(checkpoint_id)
            self._run_of[checkpoint_id] = run_id
            if batch.truncate_journal and held.journals is not None and run_id in held.journals:
                held.journals[run_id] = None  # the header went with the rest
        self._forget(plan_id, doomed, dead)
        return checkpoint_id

    async def _commit(self, held: Held, batch: WriteBatch) -> None:
        try:
            await self.store.commit(held.lease, batch)
        except CheckpointWriteError:
            raise
        except OSError as exc:
            # A custom store (or the OS under it) failed without saying which file: say the plan.
            where = Path(self.store.describe(held.lease.plan_id))
            reason = f"{os.strerror(exc.errno)} ({exc})" if exc.errno else str(exc)
            raise CheckpointWriteError(where, reason, errno_=exc.errno) from exc

    # -- retention ----------------------------------------------------------------------------
    async def _retention(
        self, held: Held, run_id: str, checkpoint_id: str | None
    ) -> tuple[list[str], list[str]]:
        """Return what a write of *checkpoint_id* makes ``keep_last`` delete (ids, run ids)."""
        if self.keep_last is None or checkpoint_id is None:
            return [], []
        plan_id = held.lease.plan_id
        self._run_of[checkpoint_id] = run_id
        doomed, kept = await self._chains_kept(
            plan_id, *newest_first({*held.checkpoints, checkpoint_id}, self.keep_last))
        if held.journals is None:
            held.journals = await journal_headers(self.store, plan_id)
        journals = dict(held.journals)
        if run_id not in journals and run_id in held.runs:
            journals[run_id] = None
        return doomed, await dead_journals(self.store, self._run_of, plan_id, kept, journals)

    async def _chains_kept(
        self, plan_id: str, doomed: list[str], kept: list[str]
    ) -> tuple[list[str], list[str]]:
        """Move from *doomed* to *kept* every checkpoint a kept delta's chain needs."""
        return await chains_kept(self.store, self._run_of, self._base_of, plan_id, doomed, kept)

    def _forget(self, plan_id: str, checkpoint_ids: list[str], run_ids: list[str]) -> None:
        forget(self._run_of, self._held.get(plan_id), checkpoint_ids, run_ids)
        for checkpoint_id in checkpoint_ids:
            self._base_of.pop(checkpoint_id, None)

    # -- reading internals --------------------------------------------------------------------
    def _parser(self, plan_id: str, model: type[Document]) -> Callable[[str, bytes], Document | Link]:
        return parser(self.store, self._run_of, self._base_of, plan_id, model)

    async def _whole(
        self, model: type[Document], plan_id: str, found: Document | Link,
        journals: list[Stored[JournalRead]] | None = None,
    ) -> Document:
        """Return a base as it is, and a delta as the state its chain adds up to."""
        if isinstance(found, Link):
            return await read_chain(self.store, model, plan_id, found, journals)
        return found

    async def _read(self, plan_id: str, checkpoint_id: str, model: type[Document]) -> Document:
        parse = self._parser(plan_id, model)
        found = await self.store.read_checkpoint(
            plan_id, checkpoint_id, lambda raw: parse(checkpoint_id, raw))
        return await self._whole(model, plan_id, found)

    async def _find_plan(self, checkpoint_id: str) -> str:
        found = await self.store.find_plans(checkpoint_id)
        if not found:
            raise CheckpointNotFoundError(checkpoint_id)
        if len(found) > 1:
            raise CheckpointError(f"checkpoint id {checkpoint_id!r} exists in several plans: {found}")
        return found[0]

    async def _restore(
        self, model: type[Document], plan_id: str, checkpoint_id: str | None
    ) -> Restored[Document] | None:
        check_plan_id(plan_id)
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id)
            return Restored(await self._read(plan_id, checkpoint_id, model), [], None)
        found = await self._latest(model, plan_id, with_journals=True)
        if found is None:
            return None
        checkpoint, journals = found
        records, problem = journal_after(self.store, checkpoint, journals)
        return Restored(checkpoint, records, problem)

    async def _latest(
        self, model: type[Document], plan_id: str, *, with_journals: bool
    ) -> tuple[Document, list[Stored[JournalRead]]] | None:
        """Return the newest checkpoint, whole, and (if asked) every journal of the plan.

        One store call reads the newest snapshot and the journals, decoded off the loop; a
        delta's chain takes two more. If the chain is pruned meanwhile (a newer base was
        written and ``keep_last`` deleted the old chain), the newest is read again; damage is
        raised, never read around.
        """
        for _ in range(10):
            found: Latest[Document | Link, JournalRead] | None = await self.store.read_latest(
                plan_id, self._parser(plan_id, model), decode_journal_item if with_journals else None)
            if found is None:
                return None
            journals = found.journals if with_journals else None  # None: not read yet
            try:
                return await self._whole(model, plan_id, found.checkpoint, journals), found.journals
            except CheckpointCorruptError:
                if found.checkpoint_id in await self.store.checkpoint_ids(plan_id):
                    raise
        raise CheckpointError(f"checkpoints of plan {plan_id!r} keep vanishing while being read")


def _bind(
    encode: Callable[[str, int], bytes], checkpoint_id: str, sequence: int,
    compress: Callable[[bytes], bytes] | None,
) -> Callable[[], bytes]:
    if compress is None:
        return lambda: encode(checkpoint_id, sequence)
    return lambda: compress(encode(checkpoint_id, sequence))


def _journal_bytes(
    run_id: str, records: list[dict[str, Any]], resumed_from: str | None
) -> Callable[[], bytes]:
    return lambda: encode_journal(journal_entries(run_id, records, resumed_from=resumed_from))


def _header(run_id: str, resumed_from: str | None) -> dict[str, Any] | None:
    return None if resumed_from is None else {"run": run_id, "resumed_from": resumed_from}
