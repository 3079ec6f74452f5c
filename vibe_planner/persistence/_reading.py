"""Reading checkpoints back: summaries for listings, and what a resume starts from.

These functions turn what a `CheckpointStore` returns into the manager's answers. The parsers
they hand the store run off the loop, in the store's thread hop; each one also notes the run
id of what it read in the manager's `RunIds` cache (retention needs it, see `_retention`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .._exceptions import CheckpointCorruptError
from .._ids import checkpoint_sequence
from .._models import Checkpoint, CheckpointInfo, ResultRecord, ResumePoint
from ._chain import Link, decode_any
from ._codec import JournalRead, decode_journal, journal_continues, journal_results, peek_summary
from ._retention import RunIds
from ._store import CheckpointStore, Stored, journal_name

__all__ = [
    "Document",
    "Restored",
    "checkpoint_path",
    "corrupt",
    "decode_journal_item",
    "journal_after",
    "parser",
    "plan_order",
    "summaries",
]

Document = TypeVar("Document", Checkpoint, ResumePoint)


@dataclass(frozen=True, slots=True)
class Restored(Generic[Document]):
    """What a resume starts from: a checkpoint plus the journal records written after it."""

    checkpoint: Document
    journal_records: list[ResultRecord]
    journal_problem: str | None
    """Why part of the journal was ignored (a torn tail), if it was."""


def checkpoint_path(store: CheckpointStore, plan_id: str, checkpoint_id: str) -> Path:
    """Return where a checkpoint lives, as errors name it."""
    return Path(store.describe(plan_id, checkpoint_id + ".json"))


def parser(
    store: CheckpointStore, run_of: RunIds, base_of: RunIds, plan_id: str, model: type[Document]
) -> Callable[[str, bytes], Document | Link]:
    """Return ``parse(checkpoint_id, raw)`` for the store; it also learns the run and base.

    A base is decoded as *model*; a delta comes back as a `Link`, whose chain the manager reads.
    """

    def parse(checkpoint_id: str, raw: bytes) -> Document | Link:
        found = decode_any(model, raw, checkpoint_path(store, plan_id, checkpoint_id))
        if isinstance(found, Link):
            run_of[checkpoint_id] = str(found.data["run_id"])
            base_of[checkpoint_id] = found.base
        else:
            run_of[checkpoint_id] = found.run_id
            base_of[checkpoint_id] = checkpoint_id
        return found

    return parse


def journal_after(
    store: CheckpointStore, checkpoint: Checkpoint | ResumePoint, journals: list[Stored[JournalRead]]
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
        path = Path(store.describe(plan_id, name))
        for record in journal_results(journal, run, known, path):
            if record["node_id"] not in seen:
                seen.add(record["node_id"])
                records.append(record)
        if journal.problem is not None:
            problems.append(journal.problem if run == own else f"{name}: {journal.problem}")
    return records, "; ".join(problems) or None


async def summaries(store: CheckpointStore, run_of: RunIds, plan_id: str) -> list[CheckpointInfo]:
    """Summarise every checkpoint of a plan (one call to the store)."""

    def parse(checkpoint_id: str, raw: bytes) -> dict[str, Any]:
        return peek_summary(raw, checkpoint_path(store, plan_id, checkpoint_id))

    infos: list[CheckpointInfo] = []
    for item in await store.read_checkpoints(plan_id, parse):
        base: dict[str, Any] = {
            "checkpoint_id": item.name, "plan_id": plan_id, "size_bytes": item.size,
            "path": str(checkpoint_path(store, plan_id, item.name)),
            "sequence": checkpoint_sequence(item.name),
        }
        if item.value is None:
            reason = getattr(item.error, "reason", str(item.error))
            infos.append(CheckpointInfo(**base, created_at=None, reason=None, completed_nodes=0,
                                        total_nodes=0, error=reason))
            continue
        summary = item.value
        run_of[item.name] = summary["run_id"]
        infos.append(CheckpointInfo(**base, created_at=summary["created_at"], reason=summary["reason"],
                                    completed_nodes=summary["completed_nodes"],
                                    total_nodes=summary["total_nodes"],
                                    waiting_for=summary["waiting_for"]))
    return infos


def plan_order(infos: list[CheckpointInfo]) -> tuple[bool, float, str]:
    """Sort key putting the most recently active plan first (see `list_checkpoints`)."""
    # Wall-clock times only order plans against each other: they share no sequence.
    times = [i.created_at.timestamp() for i in infos if i.created_at is not None]
    return not times, -max(times, default=0.0), infos[0].plan_id


def decode_journal_item(run_id: str, raw: bytes) -> JournalRead:
    """Decode a journal for a bulk read (the store passes the run id first)."""
    return decode_journal(raw)


def corrupt(item: Stored[Any]) -> list[CheckpointCorruptError]:
    """Return a bulk read's damage as a problem; an unsafe location is raised, as by a read."""
    if isinstance(item.error, CheckpointCorruptError):
        return [item.error]
    if item.error is not None:
        raise item.error
    return []
