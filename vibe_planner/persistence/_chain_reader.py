"""Reading a delta's chain from a store, checking every link, and what retention must keep.

`read_chain` turns a delta (a `Link`) into the full state as of it: it lists the plan's
checkpoints, reads those between the delta's base and the delta in one `read_many` call, walks
the ``parent`` links back to the base (each parent present, of the same run and with the
checksum its child recorded), reads the run's journal if a delta points into it, and assembles.
Any damaged or missing file raises `CheckpointCorruptError` naming that file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from .._exceptions import CheckpointCorruptError, CheckpointNotFoundError, UnsafeCheckpointFolderError
from .._ids import checkpoint_sequence
from .._models import Checkpoint, ResumePoint
from ._chain import Link, assemble, decode_any
from ._codec import JournalRead, decode_journal, peek_summary
from ._retention import RunIds
from ._store import CheckpointStore, Stored, journal_name

__all__ = ["chain_tips", "chains_kept", "kept_by_chains", "read_chain"]

_Document = TypeVar("_Document", Checkpoint, ResumePoint)


async def read_chain(
    store: CheckpointStore, model: type[_Document], plan_id: str, tip: Link,
    journals: list[Stored[JournalRead]] | None = None,
) -> _Document:
    """Return the state as of the delta *tip* (*journals*: the plan's, if already read)."""

    def path(name: str) -> Path:
        return Path(store.describe(plan_id, name))

    def parse(name: str, raw: bytes) -> _Document | Link:
        return decode_any(model, raw, path(name + ".json"))

    low, high = checkpoint_sequence(tip.base), int(tip.data["sequence"])
    ids = [i for i in await store.checkpoint_ids(plan_id) if low <= checkpoint_sequence(i) < high]
    ids.sort(key=checkpoint_sequence)
    items = await store.read_many(plan_id, ids, parse)
    base, deltas = walk(tip, {item.name: item for item in items}, path)
    run_id = str(tip.data["run_id"])
    journal = None
    if any(link.data["journal"] is not None for link in deltas):
        journal = await _journal(store, plan_id, run_id, journals)
    # Validating what the deltas add (thousands of journal records) is CPU work: off the loop.
    return await anyio.to_thread.run_sync(assemble, model, base, deltas, journal,
                                          path(journal_name(run_id)))


def walk(
    tip: Link, found: Mapping[str, Stored[_Document | Link]], path: Callable[[str], Path]
) -> tuple[_Document, list[Link]]:
    """Return the chain's base and its deltas up to *tip*, checking each link."""
    deltas = [tip]
    link = tip
    while True:
        parent_id = str(link.data["parent"])
        item = found.get(parent_id)
        where = path(parent_id + ".json")
        if item is None:
            raise CheckpointCorruptError(where, f"missing: checkpoint {tip.checkpoint_id} needs it "
                                         f"(the parent of {link.checkpoint_id})")
        if item.error is not None:
            raise item.error
        parent = item.value
        assert parent is not None
        checksum, run_id, plan_id, base = (
            (parent.data.get("checksum"), parent.data["run_id"], parent.data.get("plan_id"), parent.base)
            if isinstance(parent, Link) else
            (parent.checksum, parent.run_id, parent.plan_id, parent.checkpoint_id))
        if checksum != link.data["parent_checksum"]:
            raise CheckpointCorruptError(
                where, f"is not the checkpoint {link.checkpoint_id} was written after: its checksum "
                f"differs from the one {link.checkpoint_id} recorded (replaced or rewritten)")
        if (run_id, plan_id, base) != (link.data["run_id"], link.data["plan_id"], tip.base):
            raise CheckpointCorruptError(
                where, f"belongs to another chain than {link.checkpoint_id}, which names it as parent")
        if not isinstance(parent, Link):
            deltas.reverse()
            return parent, deltas
        if not parent.is_delta:
            raise CheckpointCorruptError(where, "a base that could not be validated")
        deltas.append(parent)
        link = parent


async def _journal(
    store: CheckpointStore, plan_id: str, run_id: str, journals: list[Stored[JournalRead]] | None
) -> JournalRead | None:
    found: list[Stored[JournalRead | None]] = [*journals] if journals is not None else []  # type: ignore[list-item]
    if journals is None:
        def parse(name: str, raw: bytes) -> JournalRead | None:
            return decode_journal(raw) if name == run_id else None  # the others: not decoded

        found = await store.read_journals(plan_id, parse)
    for item in found:
        if item.name == run_id:
            if item.error is not None:
                raise item.error
            return item.value
    return None


def chain_tips(links: Iterable[Link]) -> list[Link]:
    """Return the deltas no other delta names as parent: reading them checks every chain."""
    deltas = [link for link in links if link.is_delta]
    parents = {str(link.data["parent"]) for link in deltas}
    return [link for link in deltas if link.checkpoint_id not in parents]


def kept_by_chains(doomed: list[str], kept_bases: Mapping[str, str | None]) -> list[str] | None:
    """Return the ids of *doomed* that no kept checkpoint's chain needs.

    *kept_bases* maps each kept checkpoint to its chain's base (itself for a base); ``None``
    for one that could not be read, which keeps everything (``None`` is returned).
    """
    ranges = []
    for checkpoint_id, base in kept_bases.items():
        if base is None:
            return None
        ranges.append((checkpoint_sequence(base), checkpoint_sequence(checkpoint_id)))
    return [i for i in doomed
            if not any(low <= checkpoint_sequence(i) <= high for low, high in ranges)]



async def chains_kept(
    store: CheckpointStore, run_of: RunIds, base_of: RunIds, plan_id: str, doomed: list[str],
    kept: list[str],
) -> tuple[list[str], list[str]]:
    """Move from *doomed* to *kept* every checkpoint a kept delta's chain needs."""
    if not doomed:
        return doomed, kept
    bases: dict[str, str | None] = {}
    for checkpoint_id in kept:
        if checkpoint_id not in base_of:
            await _learn(store, run_of, base_of, plan_id, checkpoint_id)
        bases[checkpoint_id] = base_of.get(checkpoint_id)
    free = kept_by_chains(doomed, bases)
    if free is None:
        return [], kept + doomed  # a kept checkpoint is unreadable: its chain is unknown
    deleted = set(free)
    return free, kept + [i for i in doomed if i not in deleted]


async def _learn(store: CheckpointStore, run_of: RunIds, base_of: RunIds, plan_id: str,
                 checkpoint_id: str) -> None:
    """Note a checkpoint's run and base, read from its summary (nothing if it is unreadable)."""
    path = Path(store.describe(plan_id, checkpoint_id + ".json"))
    try:
        summary = await store.read_checkpoint(plan_id, checkpoint_id, lambda raw: peek_summary(raw, path))
    except (CheckpointNotFoundError, CheckpointCorruptError, UnsafeCheckpointFolderError):
        return
    run_of[checkpoint_id] = summary["run_id"]
    base_of[checkpoint_id] = summary["base"]
