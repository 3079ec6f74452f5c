"""`WorkflowPersistenceManager`: naming, sequencing, retention and loading of checkpoints.

Every method is async and does its disk work in a worker thread. The manager can be used on
its own (to list, inspect, prune or delete checkpoints) or through `MetaPlanner`, which also
uses it to record runs (see `RunRecorder`).
"""

from __future__ import annotations

import os
import secrets
import threading
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
)
from .._ids import check_checkpoint_id, check_plan_id, checkpoint_sequence
from .._models import Checkpoint, CheckpointInfo, ResultRecord, ResumePoint
from ._codec import decode_checkpoint, decode_journal, decode_resume_point, first_error, peek_summary
from ._lock import PlanLock
from ._store import CheckpointStore, FileCheckpointStore

__all__ = ["Restored", "WorkflowPersistenceManager", "journal_name"]


def journal_name(run_id: str) -> str:
    """Return the file name of a run's journal."""
    return f"journal-{run_id}.jsonl"


_Document = TypeVar("_Document", Checkpoint, ResumePoint)
_RECORD = pydantic.TypeAdapter(ResultRecord)


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
        self._run_of: dict[str, str] = {}
        self._locks: dict[str, PlanLock] = {}

    def __repr__(self) -> str:
        return f"WorkflowPersistenceManager({str(self.store.location('')).rstrip('/')!r})"

    # -- reading ----------------------------------------------------------------------------
    async def list_checkpoints(self, plan_id: str | None = None) -> list[CheckpointInfo]:
        """Return summaries of the checkpoints of one plan (or all plans), newest first.

        Damaged files are listed too, with `CheckpointInfo.error` saying what is wrong.
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
        name = journal_name(checkpoint.run_id)
        try:
            raw = self.store.read(checkpoint.plan_id, name)
        except CheckpointNotFoundError:
            return [], None
        journal = decode_journal(raw)
        path = self.store.location(checkpoint.plan_id, name)
        known = {node.id for node in checkpoint.workflow_plan.nodes}
        completed = set(checkpoint.completed_nodes)
        records = []
        for entry in journal.records:
            record = entry.get("result")
            if entry.get("run") != checkpoint.run_id or not isinstance(record, dict):
                raise CheckpointCorruptError(path, "journal record of another run or without result")
            node_id = record.get("node_id")
            if node_id not in known or record.get("status") != "completed":
                raise CheckpointCorruptError(path, f"journal record for unknown node {node_id!r}")
            if node_id not in completed:
                try:
                    records.append(_RECORD.validate_python(record))
                except pydantic.ValidationError as exc:
                    where = f"journal record of node {node_id!r}"
                    raise CheckpointCorruptError(path, f"{where}: {first_error(exc)}") from None
        return records, journal.problem

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
        except CheckpointCorruptError as exc:
            return CheckpointInfo(**base, created_at=None, reason=None, completed_nodes=0,
                                  total_nodes=0, error=exc.reason)
        self._run_of[checkpoint_id] = summary["run_id"]
        return CheckpointInfo(**base, created_at=summary["created_at"], reason=summary["reason"],
                              completed_nodes=summary["completed_nodes"],
                              total_nodes=summary["total_nodes"])

    def _list_sync(self, plan_id: str | None) -> list[CheckpointInfo]:
        plans = [plan_id] if plan_id is not None else self.store.list_plans()
        infos = [i for p in plans for cp in self.store.list_checkpoints(p)
                 if (i := self._info(p, cp)) is not None]
        infos.sort(key=lambda i: (i.created_at is not None, i.created_at, i.sequence), reverse=True)
        return infos

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
        for name in self.store.list_names(plan_id, "journal-"):
            if name.removeprefix("journal-").removesuffix(".jsonl") not in live_runs:
                self.store.delete(plan_id, name)
        return doomed

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
