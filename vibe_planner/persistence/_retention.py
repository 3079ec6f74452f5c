"""Retention: which checkpoints and journals ``keep_last`` and `prune` delete, and what it needs.

A plan keeps its newest *keep_last* checkpoints (by sequence, never by clock) and the journals
still needed by one of them: a journal is kept if its run wrote a kept checkpoint, if it
continues one (a resumed run not snapshotted yet: its header names the checkpoint), or if it is
unreadable. Deciding this needs each kept checkpoint's run id, which `RunIds` caches (bounded),
and each journal's header, which a lease holder (`Held`) learns once and then keeps up to date
itself, so a write's retention is computed without listing the plan again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import CheckpointCorruptError, CheckpointNotFoundError, UnsafeCheckpointFolderError
from .._ids import checkpoint_sequence
from ._codec import decode_journal, header_continues, peek_summary
from ._store import CheckpointStore, Lease

__all__ = ["UNREADABLE", "Held", "RunIds", "dead_journals", "forget", "journal_headers", "newest_first"]

UNREADABLE: dict[str, Any] = {}
"""Stands for the header of a journal that could not be read (retention keeps it)."""


class RunIds:
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


@dataclass(eq=False)
class Held:
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


def newest_first(checkpoint_ids: Iterable[str], keep_last: int) -> tuple[list[str], list[str]]:
    """Split checkpoint ids into those *keep_last* deletes and those it keeps (newest first)."""
    ids = sorted(checkpoint_ids, key=checkpoint_sequence, reverse=True)
    return ids[keep_last:], ids[:keep_last]


async def journal_headers(store: CheckpointStore, plan_id: str) -> dict[str, dict[str, Any] | None]:
    """Return the header of every journal of a plan (`UNREADABLE` for a damaged one)."""
    items = await store.read_journals(plan_id, _journal_header)
    return {item.name: UNREADABLE if item.error is not None else item.value for item in items}


async def dead_journals(
    store: CheckpointStore, run_of: RunIds, plan_id: str, kept: list[str],
    journals: dict[str, dict[str, Any] | None],
) -> list[str]:
    """Return the runs whose journals no kept checkpoint refers to (see the module docstring)."""
    live_runs = set()
    for checkpoint_id in kept:
        run_id = run_of.get(checkpoint_id)
        if run_id is None:
            run_id = await _learn_run(store, run_of, plan_id, checkpoint_id)
        if run_id is None:
            return []  # an unreadable kept checkpoint: keep every journal to be safe
        live_runs.add(run_id)
    kept_ids = set(kept)
    return [run for run, header in journals.items()
            if run not in live_runs and header is not UNREADABLE
            and not header_continues(header, run, kept_ids)]


def forget(
    run_of: RunIds, held: Held | None, checkpoint_ids: Iterable[str], run_ids: Iterable[str]
) -> None:
    """Drop deleted checkpoints and journals from what a manager knows."""
    for checkpoint_id in checkpoint_ids:
        run_of.pop(checkpoint_id, None)
        if held is not None:
            held.checkpoints.discard(checkpoint_id)
    if held is not None and held.journals is not None:
        for run_id in run_ids:
            held.journals.pop(run_id, None)


async def _learn_run(store: CheckpointStore, run_of: RunIds, plan_id: str, checkpoint_id: str) -> str | None:
    """Read a checkpoint's run id (``None`` if it is unreadable or gone)."""
    path = Path(store.describe(plan_id, checkpoint_id + ".json"))
    try:
        summary = await store.read_checkpoint(plan_id, checkpoint_id, lambda raw: peek_summary(raw, path))
    except (CheckpointNotFoundError, CheckpointCorruptError, UnsafeCheckpointFolderError):
        return None
    run_of[checkpoint_id] = summary["run_id"]
    return str(summary["run_id"])


def _journal_header(run_id: str, raw: bytes) -> dict[str, Any] | None:
    return decode_journal(raw).header
