"""`WorkflowPersistenceManager`: naming, sequencing, retention and loading of checkpoints.

The manager speaks to a `CheckpointStore` (files by default) and owns everything the store
does not: checkpoint ids and sequence numbers (allocated on the event loop, by the lease
holder), the codec (handed to the store as ``encode``/``parse`` callables it runs off the
loop), retention (``keep_last``, computed before a write so it goes in the same batch) and
what a resume starts from (the latest snapshot plus the journals written after it).

Every method is async. It can be used on its own (to list, inspect, prune or delete
checkpoints) or through `MetaPlanner`, which also uses it to record runs (see `RunRecorder`).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    PlanLockedError,
    UnsafeCheckpointFolderError,
)
from .._ids import check_checkpoint_id, check_plan_id, checkpoint_sequence
from .._models import Checkpoint, CheckpointInfo, ResultRecord, ResumePoint
from ._codec import (
    JournalRead,
    decode_checkpoint,
    decode_journal,
    decode_resume_point,
    encode_journal,
    header_continues,
    journal_continues,
    journal_entries,
    journal_results,
    peek_summary,
)
from ._file_store import FileCheckpointStore
from ._store import CheckpointStore, Latest, Lease, SnapshotWrite, Stored, WriteBatch, journal_name

__all__ = ["Restored", "WorkflowPersistenceManager", "journal_name"]

_Document = TypeVar("_Document", Checkpoint, ResumePoint)
_UNREADABLE: dict[str, Any] = {}
"""Stands for the header of a journal that could not be read (retention keeps it)."""


class _RunIds:
    """Checkpoint id → run id for the most recently seen checkpoints (thread-safe, bounded)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._mutex = threading.Lock()

    def __contains__(self, checkpoint_id: object) -> bool:
        return checkpoint_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __setitem__(self, checkpoint_id: str, run_id: str) -> None:
        with self._mutex:
            self._ids[checkpoint_id] = run_id
            self._ids.move_to_end(checkpoint_id)
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def get(self, checkpoint_id: str) -> str | None:
        with self._mutex:
            return self._ids.get(checkpoint_id)

    def pop(self, checkpoint_id: str, default: None = None) -> str | None:
        with self._mutex:
            return self._ids.pop(checkpoint_id, default)


@dataclass(frozen=True, slots=True)
class Restored(Generic[_Document]):
    """What a resume starts from: a checkpoint plus the journal records written after it."""

    checkpoint: _Document
    journal_records: list[ResultRecord]
    journal_problem: str | None
    """Why part of the journal was ignored (a torn tail), if it was."""


@dataclass(eq=False)
class _Held:
    """A plan whose lease this manager holds, and what it knows of the plan meanwhile.

    Only the lease holder adds snapshots and journals, so what it learnt when it took the
    lease, plus what it wrote since, is the plan's content (deletions by others only make
    retention delete what is already gone).
    """

    lease: Lease
    next_sequence: int
    checkpoints: set[str]
    journals: dict[str, dict[str, Any] | None] | None = None
    """Run id → its journal's header (``None`` if it has none); ``None`` until first needed."""
    runs: set[str] = field(default_factory=set)
    """Runs that have appended to their journal under this lease."""


class WorkflowPersistenceManager:
    """Reads and writes the checkpoints of every plan in one store.

    Args:
        checkpoint_dir: Folder holding one sub-folder per plan (created when first needed),
            when no *store* is given.
        keep_last: If set, after each checkpoint write only the newest *keep_last* checkpoints
            of that plan are kept (and journals no kept checkpoint refers to are removed).
        store: Where checkpoints live; defaults to a `FileCheckpointStore` of *checkpoint_dir*.

    Example:
        >>> manager = WorkflowPersistenceManager(checkpoint_dir=".vibe_checkpoints", keep_last=10)

    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] = ".vibe_checkpoints",
        *,
        keep_last: int | None = None,
        store: CheckpointStore | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.store: CheckpointStore = store or FileCheckpointStore(checkpoint_dir)
        self.keep_last = keep_last
        # Run ids of checkpoints seen lately (retention needs them): a bounded cache, not a
        # record of every checkpoint this manager ever touched.
        self._run_of = _RunIds()
        self._held: dict[str, _Held] = {}

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
            infos = await self._infos(plan)
            if infos:
                infos.sort(key=lambda i: i.sequence, reverse=True)
                groups.append(infos)
        groups.sort(key=_plan_order)
        return [info for group in groups for info in group]

    async def has_checkpoints(self, plan_id: str) -> bool:
        """Whether the plan has at least one checkpoint (damaged ones count)."""
        check_plan_id(plan_id)
        return bool(await self.store.checkpoint_ids(plan_id))

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """Load and verify one checkpoint by id, whatever plan it belongs to."""
        check_checkpoint_id(checkpoint_id)
        plan_id = await self._find_plan(checkpoint_id)
        return await self._read(plan_id, checkpoint_id, decode_checkpoint)

    async def latest(self, plan_id: str) -> Checkpoint | None:
        """Return the newest checkpoint of a plan, or ``None`` if it has none.

        Raises `CheckpointCorruptError` if the newest file is damaged (older ones are not
        consulted: falling back silently would resume from the wrong place).
        """
        check_plan_id(plan_id)
        found: Latest[Checkpoint, Any] | None = await self.store.read_latest(
            plan_id, self._parser(plan_id, decode_checkpoint))
        return None if found is None else found.checkpoint

    async def restore(
        self, plan_id: str, checkpoint_id: str | None = None
    ) -> Restored[Checkpoint] | None:
        """Return the state a resume starts from, or ``None`` if the plan has no checkpoint.

        Without *checkpoint_id* this is the latest checkpoint plus its run's journal; with
        one, exactly that checkpoint (journal records may postdate it, so none are applied).
        """
        return await self._restore(decode_checkpoint, plan_id, checkpoint_id)

    async def resume_point(
        self, plan_id: str, checkpoint_id: str | None = None
    ) -> Restored[ResumePoint] | None:
        """Like `restore`, with node results kept as records (what `MetaPlanner` resumes from)."""
        return await self._restore(decode_resume_point, plan_id, checkpoint_id)

    async def verify(self, plan_id: str | None = None) -> list[CheckpointCorruptError]:
        """Check every checkpoint and journal (of one plan or all); return the problems found.

        Nothing is modified. A journal with a torn last record is reported too.
        """
        if plan_id is not None:
            check_plan_id(plan_id)
        problems: list[CheckpointCorruptError] = []
        for plan in [plan_id] if plan_id is not None else await self.store.plan_ids():
            parse = self._parser(plan, decode_checkpoint)
            for item in await self.store.read_checkpoints(plan, parse):
                problems.extend(_corrupt(item))
            for journal in await self.store.read_journals(plan, _decode_journal):
                problems.extend(_corrupt(journal))
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
        ids = sorted(await self.store.checkpoint_ids(plan_id), key=checkpoint_sequence, reverse=True)
        doomed, kept = ids[keep_last:], ids[:keep_last]
        for checkpoint_id in doomed:
            self._run_of.pop(checkpoint_id, None)
        journals = await self._journal_headers(plan_id)
        dead = await self._dead_journals(plan_id, kept, journals)
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
        self._held[plan_id] = _Held(lease, sequence, set(ids))
        return lease

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
    ) -> str | None:
        """Write one batch for a plan whose lease this manager holds; return the snapshot's id.

        In order: *records* are appended to the run's journal (after a header naming
        *resumed_from*, if given), then the snapshot ``snapshot(checkpoint_id, sequence)`` is
        written, then (if *truncate_journal*) the journal is emptied, then what ``keep_last``
        no longer keeps is deleted. The id and sequence are allocated here, on the loop; the
        encoding runs off it, in the store's one thread hop (or transaction).
        """
        held = self._held.get(plan_id)
        if held is None:
            raise RuntimeError(f"writing plan {plan_id!r} without its lease: call acquire first")
        checkpoint_id: str | None = None
        write: SnapshotWrite | None = None
        if snapshot is not None:
            sequence, held.next_sequence = held.next_sequence, held.next_sequence + 1
            checkpoint_id = f"cp-{sequence:08d}-{secrets.token_hex(6)}"
            write = SnapshotWrite(checkpoint_id, _bind(snapshot, checkpoint_id, sequence))
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

    async def _commit(self, held: _Held, batch: WriteBatch) -> None:
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
        self, held: _Held, run_id: str, checkpoint_id: str | None
    ) -> tuple[list[str], list[str]]:
        """Return what a write of *checkpoint_id* makes ``keep_last`` delete (ids, run ids)."""
        if self.keep_last is None or checkpoint_id is None:
            return [], []
        plan_id = held.lease.plan_id
        ids = sorted({*held.checkpoints, checkpoint_id}, key=checkpoint_sequence, reverse=True)
        doomed, kept = ids[self.keep_last :], ids[: self.keep_last]
        self._run_of[checkpoint_id] = run_id
        if held.journals is None:
            held.journals = await self._journal_headers(plan_id)
        journals = dict(held.journals)
        if run_id not in journals and run_id in held.runs:
            journals[run_id] = None
        return doomed, await self._dead_journals(plan_id, kept, journals)

    async def _journal_headers(self, plan_id: str) -> dict[str, dict[str, Any] | None]:
        """Return the header of every journal of a plan (`_UNREADABLE` for a damaged one)."""
        items = await self.store.read_journals(plan_id, _journal_header)
        return {item.name: _UNREADABLE if item.error is not None else item.value for item in items}

    async def _dead_journals(
        self, plan_id: str, kept: list[str], journals: dict[str, dict[str, Any] | None]
    ) -> list[str]:
        """Return the runs whose journals no kept checkpoint refers to.

        A journal is kept if its run wrote a kept checkpoint, or if it continues one (a resumed
        run not snapshotted yet: its header names the checkpoint), or if it is unreadable.
        """
        live_runs = set()
        for checkpoint_id in kept:
            run_id = self._run_of.get(checkpoint_id)
            if run_id is None:
                run_id = await self._learn_run(plan_id, checkpoint_id)
            if run_id is None:
                return []  # an unreadable kept checkpoint: keep every journal to be safe
            live_runs.add(run_id)
        kept_ids = set(kept)
        return [run for run, header in journals.items()
                if run not in live_runs and header is not _UNREADABLE
                and not header_continues(header, run, kept_ids)]

    async def _learn_run(self, plan_id: str, checkpoint_id: str) -> str | None:
        """Read a checkpoint's run id (``None`` if it is unreadable or gone)."""
        path = self._path(plan_id, checkpoint_id)
        try:
            summary = await self.store.read_checkpoint(
                plan_id, checkpoint_id, lambda raw: peek_summary(raw, path))
        except (CheckpointNotFoundError, CheckpointCorruptError, UnsafeCheckpointFolderError):
            return None
        self._run_of[checkpoint_id] = summary["run_id"]
        return str(summary["run_id"])

    def _forget(self, plan_id: str, checkpoint_ids: Iterable[str], run_ids: Iterable[str]) -> None:
        """Drop deleted checkpoints and journals from what this manager knows."""
        held = self._held.get(plan_id)
        for checkpoint_id in checkpoint_ids:
            self._run_of.pop(checkpoint_id, None)
            if held is not None:
                held.checkpoints.discard(checkpoint_id)
        if held is not None and held.journals is not None:
            for run_id in run_ids:
                held.journals.pop(run_id, None)

    # -- reading internals --------------------------------------------------------------------
    def _path(self, plan_id: str, checkpoint_id: str) -> Path:
        return Path(self.store.describe(plan_id, checkpoint_id + ".json"))

    def _parser(
        self, plan_id: str, decode: Callable[[bytes, Path], _Document]
    ) -> Callable[[str, bytes], _Document]:
        """Return ``parse(checkpoint_id, raw)`` for the store; it also learns the run id."""

        def parse(checkpoint_id: str, raw: bytes) -> _Document:
            checkpoint = decode(raw, self._path(plan_id, checkpoint_id))
            self._run_of[checkpoint_id] = checkpoint.run_id
            return checkpoint

        return parse

    async def _read(
        self, plan_id: str, checkpoint_id: str, decode: Callable[[bytes, Path], _Document]
    ) -> _Document:
        parse = self._parser(plan_id, decode)
        return await self.store.read_checkpoint(plan_id, checkpoint_id, lambda raw: parse(checkpoint_id, raw))

    async def _find_plan(self, checkpoint_id: str) -> str:
        found = await self.store.find_plans(checkpoint_id)
        if not found:
            raise CheckpointNotFoundError(checkpoint_id)
        if len(found) > 1:
            raise CheckpointError(f"checkpoint id {checkpoint_id!r} exists in several plans: {found}")
        return found[0]

    async def _restore(
        self, decode: Callable[[bytes, Path], _Document], plan_id: str, checkpoint_id: str | None
    ) -> Restored[_Document] | None:
        check_plan_id(plan_id)
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id)
            return Restored(await self._read(plan_id, checkpoint_id, decode), [], None)
        # One call: the newest snapshot and every journal, decoded off the loop.
        found = await self.store.read_latest(plan_id, self._parser(plan_id, decode), _decode_journal)
        if found is None:
            return None
        records, problem = self._journal_after(found.checkpoint, found.journals)
        return Restored(found.checkpoint, records, problem)

    def _journal_after(
        self, checkpoint: Checkpoint | ResumePoint, journals: list[Stored[JournalRead]]
    ) -> tuple[list[ResultRecord], str | None]:
        """Return the journal records that postdate *checkpoint*, and why any were ignored.

        Those are the records of the checkpoint's own run, then those of every run resumed
        from it that crashed before its own first snapshot was durable (their journals start
        with a header naming *checkpoint*). Runs are taken in name order; a node recorded by
        several is taken from the first.
        """
        plan_id, own = checkpoint.plan_id, checkpoint.run_id
        by_run = {item.name: item for item in journals}
        known = {node.id for node in checkpoint.workflow_plan.nodes}
        seen = set(checkpoint.completed_nodes)
        records: list[ResultRecord] = []
        problems: list[str] = []
        others = sorted((r for r in by_run if r != own), key=journal_name)
        for run in [own, *others] if own in by_run else others:
            item = by_run[run]
            if item.error is not None:
                raise item.error
            journal = item.value
            if journal is None:
                continue
            if run != own and not journal_continues(journal, run, checkpoint.checkpoint_id):
                continue
            name = journal_name(run)
            path = Path(self.store.describe(plan_id, name))
            for record in journal_results(journal, run, known, path):
                if record["node_id"] not in seen:
                    seen.add(record["node_id"])
                    records.append(record)
            if journal.problem is not None:
                problems.append(journal.problem if run == own else f"{name}: {journal.problem}")
        return records, "; ".join(problems) or None

    async def _infos(self, plan_id: str) -> list[CheckpointInfo]:
        """Summarise every checkpoint of a plan (one call to the store)."""

        def parse(checkpoint_id: str, raw: bytes) -> dict[str, Any]:
            return peek_summary(raw, self._path(plan_id, checkpoint_id))

        infos: list[CheckpointInfo] = []
        for item in await self.store.read_checkpoints(plan_id, parse):
            base: dict[str, Any] = {
                "checkpoint_id": item.name, "plan_id": plan_id, "size_bytes": item.size,
                "path": str(self._path(plan_id, item.name)), "sequence": checkpoint_sequence(item.name),
            }
            if item.value is None:
                reason = getattr(item.error, "reason", str(item.error))
                infos.append(CheckpointInfo(**base, created_at=None, reason=None, completed_nodes=0,
                                            total_nodes=0, error=reason))
                continue
            summary = item.value
            self._run_of[item.name] = summary["run_id"]
            infos.append(CheckpointInfo(**base, created_at=summary["created_at"], reason=summary["reason"],
                                        completed_nodes=summary["completed_nodes"],
                                        total_nodes=summary["total_nodes"],
                                        waiting_for=summary["waiting_for"]))
        return infos


def _plan_order(infos: list[CheckpointInfo]) -> tuple[bool, float, str]:
    """Sort key putting the most recently active plan first (see `list_checkpoints`)."""
    # Wall-clock times only order plans against each other: they share no sequence.
    times = [i.created_at.timestamp() for i in infos if i.created_at is not None]
    return not times, -max(times, default=0.0), infos[0].plan_id


def _bind(encode: Callable[[str, int], bytes], checkpoint_id: str, sequence: int) -> Callable[[], bytes]:
    return lambda: encode(checkpoint_id, sequence)


def _journal_bytes(
    run_id: str, records: list[dict[str, Any]], resumed_from: str | None
) -> Callable[[], bytes]:
    return lambda: encode_journal(journal_entries(run_id, records, resumed_from=resumed_from))


def _header(run_id: str, resumed_from: str | None) -> dict[str, Any] | None:
    return None if resumed_from is None else {"run": run_id, "resumed_from": resumed_from}


def _decode_journal(run_id: str, raw: bytes) -> JournalRead:
    return decode_journal(raw)


def _journal_header(run_id: str, raw: bytes) -> dict[str, Any] | None:
    return decode_journal(raw).header


def _corrupt(item: Stored[Any]) -> list[CheckpointCorruptError]:
    """Return a bulk read's damage as a problem; an unsafe location is raised, as by a read."""
    if isinstance(item.error, CheckpointCorruptError):
        return [item.error]
    if item.error is not None:
        raise item.error
    return []
