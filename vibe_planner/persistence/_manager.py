"""`WorkflowPersistenceManager`: naming, sequencing, retention and loading of checkpoints.

Every method is async and does its disk work in a worker thread. The manager can be used on
its own (to list, inspect, prune or delete checkpoints) or through `MetaPlanner`, which also
uses it to record runs (see `RunRecorder`).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio.to_thread
import pydantic

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
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
    first_error,
    peek_summary,
)
from ._lock import PlanLock
from ._store import CheckpointStore, FileCheckpointStore

__all__ = ["Restored", "WorkflowPersistenceManager", "journal_name"]


def journal_name(run_id: str) -> str:
    """Return the file name of a run's journal."""
    return f"journal-{run_id}.jsonl"


_Document = TypeVar("_Document", Checkpoint, ResumePoint)
_RECORD = pydantic.TypeAdapter(ResultRecord)


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


class WorkflowPersistenceManager:
    """Reads and writes the checkpoints of every plan under one folder.

    Args:
        checkpoint_dir: Folder holding one sub-folder per plan (created when first needed).
        keep_last: If set, after each checkpoint write only the newest *keep_last* checkpoints
            of that plan are kept (and journals no kept checkpoint refers to are removed).
        store: Custom byte storage; defaults to files under *checkpoint_dir*.

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
        self._mutex = threading.Lock()
        self._next_sequence: dict[str, int] = {}
        # Run ids of checkpoints seen lately (retention needs them): a bounded cache, not a
        # record of every checkpoint this manager ever touched.
        self._run_of = _RunIds()
        self._locks: dict[str, PlanLock] = {}

    def __repr__(self) -> str:
        return f"WorkflowPersistenceManager({str(self.store.location('')).rstrip('/')!r})"

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
        return await anyio.to_thread.run_sync(self._list_sync, plan_id)

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """Load and verify one checkpoint by id, whatever plan it belongs to."""
        check_checkpoint_id(checkpoint_id)
        return await anyio.to_thread.run_sync(self._get_sync, checkpoint_id, None)

    async def latest(self, plan_id: str) -> Checkpoint | None:
        """Return the newest checkpoint of a plan, or ``None`` if it has none.

        Raises `CheckpointCorruptError` if the newest file is damaged (older ones are not
        consulted: falling back silently would resume from the wrong place).
        """
        check_plan_id(plan_id)
        return await anyio.to_thread.run_sync(self._latest_sync, plan_id)

    async def restore(
        self, plan_id: str, checkpoint_id: str | None = None
    ) -> Restored[Checkpoint] | None:
        """Return the state a resume starts from, or ``None`` if the plan has no checkpoint.

        Without *checkpoint_id* this is the latest checkpoint plus its run's journal; with
        one, exactly that checkpoint (journal records may postdate it, so none are applied).
        """
        check_plan_id(plan_id)
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id)
        return await anyio.to_thread.run_sync(self._restore_sync, decode_checkpoint, plan_id, checkpoint_id)

    async def resume_point(
        self, plan_id: str, checkpoint_id: str | None = None
    ) -> Restored[ResumePoint] | None:
        """Like `restore`, with node results kept as records (what `MetaPlanner` resumes from)."""
        check_plan_id(plan_id)
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id)
        return await anyio.to_thread.run_sync(self._restore_sync, decode_resume_point, plan_id, checkpoint_id)

    async def verify(self, plan_id: str | None = None) -> list[CheckpointCorruptError]:
        """Check every checkpoint and journal (of one plan or all); return the problems found.

        Nothing is modified. A journal with a torn last record is reported too.
        """
        if plan_id is not None:
            check_plan_id(plan_id)
        return await anyio.to_thread.run_sync(self._verify_sync, plan_id)

    # -- deleting ---------------------------------------------------------------------------
    async def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete one checkpoint; `CheckpointNotFoundError` if there is none with this id."""
        check_checkpoint_id(checkpoint_id)

        def delete() -> None:
            plan_id = self._find_plan(checkpoint_id)
            self.store.delete(plan_id, checkpoint_id + ".json")

        await anyio.to_thread.run_sync(delete)

    async def prune(self, plan_id: str, keep_last: int) -> list[str]:
        """Delete all but the newest *keep_last* checkpoints of a plan; return the deleted ids."""
        check_plan_id(plan_id)
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        return await anyio.to_thread.run_sync(self._prune_sync, plan_id, keep_last)

    async def delete_plan(self, plan_id: str) -> None:
        """Delete every checkpoint and journal of a plan. Refused while the plan is running."""
        check_plan_id(plan_id)

        def delete() -> None:
            lock = self.store.lock(plan_id)
            try:
                self.store.delete_plan(plan_id)
            finally:
                lock.release()
            with self._mutex:
                self._next_sequence.pop(plan_id, None)

        await anyio.to_thread.run_sync(delete)

    # -- writing (used by RunRecorder and MetaPlanner.create_checkpoint) --------------------
    async def acquire(self, plan_id: str) -> PlanLock:
        """Take the plan's run lock (`PlanLockedError` if busy) and sync the sequence counter."""
        check_plan_id(plan_id)

        def take() -> PlanLock:
            with self._mutex:
                if plan_id in self._locks:
                    lock = self._locks[plan_id]
                    raise PlanLockedError(plan_id, lock.path, f"pid={os.getpid()} (this process)")
            lock = self.store.lock(plan_id)
            with self._mutex:
                self._locks[plan_id] = lock
                self._next_sequence[plan_id] = self._max_sequence(plan_id) + 1
            return lock

        return await anyio.to_thread.run_sync(take)

    async def release(self, lock: PlanLock) -> None:
        """Release a lock taken with `acquire`."""
        with self._mutex:
            self._locks.pop(lock.plan_id, None)
        await anyio.to_thread.run_sync(lock.release)

    def write_snapshot_sync(self, plan_id: str, run_id: str, encode: Any) -> str:
        """Allocate the next id, write ``encode(checkpoint_id, sequence)`` atomically, prune.

        Called from a worker thread by the holder of the plan's lock.
        """
        with self._mutex:
            sequence = self._next_sequence.get(plan_id) or self._max_sequence(plan_id) + 1
            self._next_sequence[plan_id] = sequence + 1
        checkpoint_id = f"cp-{sequence:08d}-{secrets.token_hex(6)}"
        self.store.write_atomic(plan_id, checkpoint_id + ".json", encode(checkpoint_id, sequence))
        self._run_of[checkpoint_id] = run_id
        if self.keep_last is not None:
            self._prune_sync(plan_id, self.keep_last)
        return checkpoint_id

    # -- synchronous internals (worker threads) ---------------------------------------------
    def _max_sequence(self, plan_id: str) -> int:
        ids = self.store.list_checkpoints(plan_id)
        return max((checkpoint_sequence(i) for i in ids), default=0)

    def _sorted_ids(self, plan_id: str) -> list[str]:
        return sorted(self.store.list_checkpoints(plan_id), key=checkpoint_sequence, reverse=True)

    def _load(self, plan_id: str, checkpoint_id: str) -> Checkpoint:
        return self._decode(plan_id, checkpoint_id, decode_checkpoint)

    def _decode(
        self, plan_id: str, checkpoint_id: str, decode: Callable[[bytes, Path], _Document]
    ) -> _Document:
        name = checkpoint_id + ".json"
        checkpoint = decode(self.store.read(plan_id, name), self.store.location(plan_id, name))
        self._run_of[checkpoint_id] = checkpoint.run_id
        return checkpoint

    def _find_plan(self, checkpoint_id: str) -> str:
        found = [p for p in self.store.list_plans() if checkpoint_id in self.store.list_checkpoints(p)]
        if not found:
            raise CheckpointNotFoundError(checkpoint_id)
        if len(found) > 1:
            raise CheckpointError(f"checkpoint id {checkpoint_id!r} exists in several plans: {found}")
        return found[0]

    def _get_sync(self, checkpoint_id: str, plan_id: str | None) -> Checkpoint:
        return self._load(plan_id or self._find_plan(checkpoint_id), checkpoint_id)

    def _latest_sync(self, plan_id: str) -> Checkpoint | None:
        return self._latest(plan_id, decode_checkpoint)

    def _latest(self, plan_id: str, decode: Callable[[bytes, Path], _Document]) -> _Document | None:
        # Another process may delete the newest file between listing and reading: list again.
        for _ in range(10):
            ids = self._sorted_ids(plan_id)
            if not ids:
                return None
            try:
                return self._decode(plan_id, ids[0], decode)
            except CheckpointNotFoundError:
                continue
        raise CheckpointError(f"checkpoints of plan {plan_id!r} keep vanishing while being read")

    def _restore_sync(
        self, decode: Callable[[bytes, Path], _Document], plan_id: str, checkpoint_id: str | None
    ) -> Restored[_Document] | None:
        if checkpoint_id is not None:
            if checkpoint_id not in self.store.list_checkpoints(plan_id):
                raise CheckpointNotFoundError(checkpoint_id, plan_id)
            return Restored(self._decode(plan_id, checkpoint_id, decode), [], None)
        checkpoint = self._latest(plan_id, decode)
        if checkpoint is None:
            return None
        records, problem = self._journal_after(checkpoint)
        return Restored(checkpoint, records, problem)

    def _journal_after(self, checkpoint: Checkpoint | ResumePoint) -> tuple[list[ResultRecord], str | None]:
        """Return the journal records that postdate *checkpoint*, and why any were ignored.

        Those are the records of the checkpoint's own run, then those of every run resumed
        from it that crashed before its own first snapshot was durable (their journals start
        with a header naming *checkpoint*). Runs are taken in name order; a node recorded by
        several is taken from the first.
        """
        plan_id, run_id = checkpoint.plan_id, checkpoint.run_id
        own = journal_name(run_id)
        known = {node.id for node in checkpoint.workflow_plan.nodes}
        seen = set(checkpoint.completed_nodes)
        records: list[ResultRecord] = []
        problems: list[str] = []
        others = sorted(n for n in self.store.list_names(plan_id, "journal-") if n != own)
        for name in [own, *others]:
            journal = self._read_journal(plan_id, name)
            if journal is None:
                continue
            journal_run = name.removeprefix("journal-").removesuffix(".jsonl")
            if name != own and not _continues(journal, journal_run, checkpoint.checkpoint_id):
                continue
            path = self.store.location(plan_id, name)
            for record in _journal_records(journal, journal_run, known, path):
                if record["node_id"] not in seen:
                    seen.add(record["node_id"])
                    records.append(record)
            if journal.problem is not None:
                problems.append(journal.problem if name == own else f"{name}: {journal.problem}")
        return records, "; ".join(problems) or None

    def _read_journal(self, plan_id: str, name: str) -> JournalRead | None:
        try:
            raw = self.store.read(plan_id, name)
        except CheckpointNotFoundError:
            return None
        return decode_journal(raw)

    def _info(self, plan_id: str, checkpoint_id: str) -> CheckpointInfo | None:
        """Summarise a checkpoint; ``None`` if it was deleted since it was listed."""
        name = checkpoint_id + ".json"
        path = self.store.location(plan_id, name)
        base: dict[str, Any] = {
            "checkpoint_id": checkpoint_id, "plan_id": plan_id, "path": str(path),
            "sequence": checkpoint_sequence(checkpoint_id), "size_bytes": self.store.size(plan_id, name),
        }
        try:
            summary = peek_summary(self.store.read(plan_id, name), path)
        except CheckpointNotFoundError:
            return None
        except (CheckpointCorruptError, UnsafeCheckpointFolderError) as exc:
            return CheckpointInfo(**base, created_at=None, reason=None, completed_nodes=0,
                                  total_nodes=0, error=exc.reason)
        self._run_of[checkpoint_id] = summary["run_id"]
        return CheckpointInfo(**base, created_at=summary["created_at"], reason=summary["reason"],
                              completed_nodes=summary["completed_nodes"],
                              total_nodes=summary["total_nodes"])

    def _list_sync(self, plan_id: str | None) -> list[CheckpointInfo]:
        plans = [plan_id] if plan_id is not None else self.store.list_plans()
        groups = []
        for plan in plans:
            infos = [i for cp in self.store.list_checkpoints(plan)
                     if (i := self._info(plan, cp)) is not None]
            if infos:
                infos.sort(key=lambda i: i.sequence, reverse=True)
                groups.append(infos)
        groups.sort(key=self._plan_order)
        return [info for group in groups for info in group]

    @staticmethod
    def _plan_order(infos: list[CheckpointInfo]) -> tuple[bool, float, str]:
        """Sort key putting the most recently active plan first (see `list_checkpoints`)."""
        # Wall-clock times only order plans against each other: they share no sequence.
        times = [i.created_at.timestamp() for i in infos if i.created_at is not None]
        return not times, -max(times, default=0.0), infos[0].plan_id

    def _prune_sync(self, plan_id: str, keep_last: int) -> list[str]:
        ids = self._sorted_ids(plan_id)
        doomed, kept = ids[keep_last:], ids[:keep_last]
        for checkpoint_id in doomed:
            self.store.delete(plan_id, checkpoint_id + ".json")
            self._run_of.pop(checkpoint_id, None)
        live_runs = set()
        for checkpoint_id in kept:
            if checkpoint_id not in self._run_of:
                self._info(plan_id, checkpoint_id)  # learns the run id if the file is readable
            run_id = self._run_of.get(checkpoint_id)
            if run_id is None:
                return doomed  # an unreadable kept checkpoint: keep every journal to be safe
            live_runs.add(run_id)
        kept_ids = set(kept)
        for name in self.store.list_names(plan_id, "journal-"):
            run_id = name.removeprefix("journal-").removesuffix(".jsonl")
            if run_id not in live_runs and not self._continues_kept(plan_id, name, run_id, kept_ids):
                self.store.delete(plan_id, name)
        return doomed

    def _continues_kept(self, plan_id: str, name: str, run_id: str, kept: set[str]) -> bool:
        """Whether a journal continues a kept checkpoint (a resumed run not snapshotted yet)."""
        try:
            journal = self._read_journal(plan_id, name)
        except CheckpointCorruptError:
            return True  # unreadable: keep it to be safe
        if journal is None or journal.header is None:
            return False
        return any(_continues(journal, run_id, checkpoint_id) for checkpoint_id in kept)

    def _verify_sync(self, plan_id: str | None) -> list[CheckpointCorruptError]:
        problems: list[CheckpointCorruptError] = []
        for plan in [plan_id] if plan_id is not None else self.store.list_plans():
            for checkpoint_id in self.store.list_checkpoints(plan):
                try:
                    self._load(plan, checkpoint_id)
                except CheckpointCorruptError as exc:
                    problems.append(exc)
                except CheckpointNotFoundError:
                    continue  # deleted since listed (pruned by a running plan)
            for name in self.store.list_names(plan, "journal-"):
                try:
                    journal = decode_journal(self.store.read(plan, name))
                except CheckpointCorruptError as exc:
                    problems.append(exc)
                    continue
                except CheckpointNotFoundError:
                    continue
                if journal.problem is not None:
                    path = self.store.location(plan, name)
                    problems.append(CheckpointCorruptError(path, journal.problem))
        return problems


def _continues(journal: JournalRead, run_id: str, checkpoint_id: str) -> bool:
    """Whether *journal* (of run *run_id*) says it continues the checkpoint *checkpoint_id*."""
    header = journal.header
    return header is not None and header.get("run") == run_id and header.get("resumed_from") == checkpoint_id


def _journal_records(
    journal: JournalRead, run_id: str, known: set[str], path: Path
) -> list[ResultRecord]:
    """Validate the result records of a journal of run *run_id* (`CheckpointCorruptError` if bad)."""
    records = []
    for entry in journal.records:
        record = entry.get("result")
        if entry.get("run") != run_id or not isinstance(record, dict):
            raise CheckpointCorruptError(path, "journal record of another run or without result")
        node_id = record.get("node_id")
        if node_id not in known or record.get("status") != "completed":
            raise CheckpointCorruptError(path, f"journal record for unknown node {node_id!r}")
        try:
            records.append(_RECORD.validate_python(record))
        except pydantic.ValidationError as exc:
            where = f"journal record of node {node_id!r}"
            raise CheckpointCorruptError(path, f"{where}: {first_error(exc)}") from None
    return records
