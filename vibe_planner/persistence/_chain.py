"""Chains of checkpoints (schema version 2): a base holding the whole state, then deltas.

The codec's companion for incremental checkpoints: which snapshot of a run is a base
(`ChainWriter`), the fields of a delta (`delta_fields`), how one file of a chain is parsed
(`decode_link`, `decode_any`) and how a chain becomes the state as of its last delta
(`assemble`). The format and the reasons for it are in docs/checkpoints.md, "File format".

Invariants: every file of a chain is written by one run (a run's first snapshot is a base), so
a chain's sequences are consecutive; a delta records its parent's id and checksum, so a missing
or replaced link is detected; the state is never rebuilt from part of a chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from .._exceptions import CheckpointCorruptError
from .._models import (
    SCHEMA_VERSION,
    Checkpoint,
    CheckpointReason,
    InputRequest,
    NodeResult,
    NodeStatus,
    ResultRecord,
    ResumePoint,
    TokenUsage,
)
from .._state import Capture, utcnow
from ._codec import (
    DELTA_HEAD,
    DeltaFound,
    JournalRead,
    check_consistency,
    decode_checkpoint,
    decode_resume_point,
    first_error,
    is_canonical,
    journal_results,
    parse_verified,
)
from ._compression import decompress

__all__ = ["BASE_RATIO", "ChainWriter", "Link", "Parent", "assemble", "decode_any", "decode_link",
           "delta_fields"]

_Document = TypeVar("_Document", Checkpoint, ResumePoint)

BASE_RATIO = 3.0
"""A snapshot is a base once the deltas since the last base hold this many times its bytes."""


@dataclass(frozen=True, slots=True)
class Parent:
    """The checkpoint a delta follows: its id, its chain's base, its checksum."""

    checkpoint_id: str
    base: str
    checksum: str


class ChainWriter:
    """Decides which snapshots of one run are bases, and what each delta points at.

    Used by the run's recorder on the event loop: `wants_base` before a capture, the two
    ``*_written`` methods once a batch is durable. ``ratio`` 0 makes every snapshot a base.
    """

    def __init__(self, ratio: float = BASE_RATIO) -> None:
        self.ratio = ratio
        self.parent: Parent | None = None
        """The last snapshot written, once there is one."""
        self.mark = 0
        """Change-log position of the last snapshot's capture (a delta takes what follows)."""
        self._base_size = 0
        self._chain_bytes = 0
        self._covered = 0  # result records of the journal that written snapshots hold
        self._pending: list[str] = []  # nodes journaled since the last snapshot, in order

    def wants_base(self) -> bool:
        """Whether the next snapshot must be a base (the first, or the chain grew too long)."""
        return self.parent is None or self.ratio <= 0 or self._chain_bytes >= self.ratio * self._base_size

    def journal_ref(self, batch: Iterable[str]) -> dict[str, Any] | None:
        """Return a delta's ``journal`` field, given the nodes this batch journals before it."""
        nodes = [*self._pending, *batch]
        return {"first": self._covered, "nodes": nodes} if nodes else None

    def journal_written(self, nodes: Iterable[str]) -> None:
        """Note journal records made durable (before the batch's snapshot, if any).

        Their bytes do not count toward the chain: a run's journal holds each node at most
        once, so reading it is bounded by the state's size however long the chain.
        """
        self._pending.extend(nodes)

    def snapshot_written(self, checkpoint_id: str, *, full: bool, size: int, checksum: str,
                         mark: int) -> None:
        """Note a durable snapshot of *size* bytes (uncompressed)."""
        self._covered += len(self._pending)
        self._pending = []
        if full or self.parent is None:
            base, self._base_size, self._chain_bytes = checkpoint_id, size, 0
        else:
            base = self.parent.base
            self._chain_bytes += size
        self.parent = Parent(checkpoint_id, base, checksum)
        self.mark = mark


def delta_fields(
    capture: Capture, *, plan_id: str, run_id: str, total: int, parent: Parent,
    journal: dict[str, Any] | None, checkpoint_id: str, sequence: int, reason: str,
) -> dict[str, Any]:
    """Return the fields of a delta: what changed since *parent* (run in a worker thread)."""
    journaled = set(journal["nodes"]) if journal else ()
    results = {k: v for k, v in capture.records.items() if k not in journaled}
    completed, failed = capture.counts
    fields: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "delta", "checkpoint_id": checkpoint_id,
        "sequence": sequence, "plan_id": plan_id, "run_id": run_id, "created_at": utcnow(),
        "reason": reason, "base": parent.base, "parent": parent.checkpoint_id,
        "parent_checksum": parent.checksum, "node_results": results, "journal": journal,
        "counts": {"completed": completed, "failed": failed, "total": total},
        "usage": capture.usage.model_dump(), "metadata": capture.metadata,
    }
    # Every input request as of this delta, changed or not (absent: none), and which are
    # pending (a delta has no completed-node list to tell them by): see docs/checkpoints.md.
    if capture.requests:
        fields["input_requests"] = [r.model_dump(mode="json") for r in capture.requests]
    if capture.waiting_for:
        fields["waiting_for"] = capture.waiting_for
    return fields


@dataclass(frozen=True, slots=True)
class Link:
    """One file of a chain, parsed and verified (its checksum), not yet validated."""

    data: dict[str, Any]
    path: Path

    @property
    def checkpoint_id(self) -> str:
        return str(self.data["checkpoint_id"])

    @property
    def is_delta(self) -> bool:
        return bool(self.data["kind"] == "delta")

    @property
    def base(self) -> str:
        return str(self.data["base"]) if self.is_delta else self.checkpoint_id


_DELTA_FIELDS: dict[str, type | tuple[type, ...]] = {
    "checkpoint_id": str, "run_id": str, "plan_id": str, "sequence": int, "base": str,
    "parent": str, "parent_checksum": str, "checksum": str, "node_results": dict, "counts": dict,
    "usage": dict, "metadata": dict, "journal": (dict, type(None)), "created_at": str, "reason": str,
}


def decode_link(raw: bytes, path: Path) -> Link:
    """Parse and verify one file of a chain (a base or a delta), without validating the state."""
    raw = decompress(raw, path)
    return _link(parse_verified(raw, path, verified=is_canonical(raw)), path)


def _link(data: dict[str, Any], path: Path) -> Link:
    if data.get("kind") == "delta":
        for key, kind in _DELTA_FIELDS.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise CheckpointCorruptError(path, f"delta field {key!r} is missing or malformed")
        journal = data["journal"]
        if journal is not None and not (
                isinstance(journal.get("first"), int) and journal["first"] >= 0
                and isinstance(journal.get("nodes"), list)
                and all(isinstance(n, str) for n in journal["nodes"])):
            raise CheckpointCorruptError(path, "delta field 'journal' is malformed")
    elif data.get("kind") != "base" or not isinstance(data.get("node_results"), dict) \
            or not isinstance(data.get("checkpoint_id"), str) or not isinstance(data.get("run_id"), str):
        raise CheckpointCorruptError(path, f"not a base or a delta (kind {data.get('kind')!r})")
    if path.stem != data["checkpoint_id"]:
        raise CheckpointCorruptError(
            path, f"file name says {path.stem!r} but the document says {data['checkpoint_id']!r}")
    return Link(data, path)


def decode_any(model: type[_Document], raw: bytes, path: Path) -> _Document | Link:
    """Decode a base (or version-1) document as *model*, or return a delta as a `Link`."""
    raw = decompress(raw, path)
    if raw.startswith(DELTA_HEAD):
        return decode_link(raw, path)
    try:
        return decode_checkpoint(raw, path) if model is Checkpoint else decode_resume_point(raw, path)  # type: ignore[return-value]
    except DeltaFound as found:  # a delta laid out by hand: parsed and verified already
        return _link(found.data, path)


class _DeltaHeader(pydantic.BaseModel):
    """The fields of a delta that the state as of it takes from it, validated."""

    checkpoint_id: str
    sequence: int = pydantic.Field(ge=0)
    run_id: str
    created_at: datetime
    reason: CheckpointReason
    usage: TokenUsage
    metadata: dict[str, pydantic.JsonValue]
    input_requests: list[InputRequest] = pydantic.Field(default_factory=list)
    """The plan's requests as of the delta: all of them (earlier documents' are superseded)."""
    checksum: str


_RESULTS: dict[type, pydantic.TypeAdapter[Any]] = {
    Checkpoint: pydantic.TypeAdapter(dict[str, NodeResult]),
    ResumePoint: pydantic.TypeAdapter(dict[str, ResultRecord]),
}


def assemble(
    model: type[_Document], base: _Document, deltas: list[Link], journal: JournalRead | None,
    journal_path: Path,
) -> _Document:
    """Return the state as of the last of *deltas*, which follow the (validated) *base*.

    Only what the deltas add is validated here: the base was, by the codec's fast path.
    """
    tip = deltas[-1]
    adapter = _RESULTS[model]
    results: dict[str, Any] = dict(base.node_results)
    records = None
    for delta in deltas:
        ref = delta.data["journal"]
        if ref is not None:
            if records is None:
                records = _journal_records(journal, tip, base, journal_path)
            found = _journal_range(records, ref, delta, journal_path)
            # Journal records were validated as records already; only a `Checkpoint` needs
            # them as `NodeResult` models.
            results.update(found if model is ResumePoint else _validated(adapter, found, journal_path))
        if delta.data["node_results"]:
            results.update(_validated(adapter, delta.data["node_results"], delta.path))
    completed: list[str] = []
    failed: list[str] = []
    pending: list[str] = []
    for node_id in base.workflow_plan.order:
        result = results.get(node_id)
        status = None if result is None else result["status"] if isinstance(result, dict) else result.status
        (completed if status == NodeStatus.COMPLETED else failed if status == NodeStatus.FAILED
         else pending).append(node_id)
    counts = tip.data["counts"]
    if (counts.get("completed"), counts.get("failed"), counts.get("total")) \
            != (len(completed), len(failed), len(base.workflow_plan.nodes)):
        raise CheckpointCorruptError(tip.path, f"its counts {counts} disagree with its chain "
                                     f"({len(completed)} completed, {len(failed)} failed)")
    try:
        header = _DeltaHeader.model_validate(tip.data)
    except pydantic.ValidationError as exc:
        raise CheckpointCorruptError(tip.path, f"does not match the delta schema: {first_error(exc)}") \
            from None
    state = base.model_copy(update={
        **dict(header), "kind": "delta", "base": base.checkpoint_id, "node_results": results,
        "completed_nodes": completed, "failed_nodes": failed, "pending_nodes": pending,
    })
    check_consistency(state, tip.path)
    return state


def _validated(adapter: pydantic.TypeAdapter[Any], results: Any, path: Path) -> dict[str, Any]:
    try:
        validated: dict[str, Any] = adapter.validate_python(results)
    except pydantic.ValidationError as exc:
        raise CheckpointCorruptError(path, f"node_results.{first_error(exc)}") from None
    return validated


def _journal_records(journal: JournalRead | None, tip: Link, base: Checkpoint | ResumePoint,
                     path: Path) -> list[Any]:
    if journal is None:
        raise CheckpointCorruptError(path, f"missing: checkpoint {tip.checkpoint_id} holds "
                                     "results that are only in this journal")
    known = {node.id for node in base.workflow_plan.nodes}
    return journal_results(journal, str(tip.data["run_id"]), known, path)


def _journal_range(records: list[Any], ref: dict[str, Any], delta: Link, path: Path) -> dict[str, Any]:
    first, nodes = ref["first"], ref["nodes"]
    if len(records) < first + len(nodes):
        raise CheckpointCorruptError(
            path, f"holds {len(records)} intact result records, but checkpoint "
            f"{delta.checkpoint_id} needs records {first} to {first + len(nodes) - 1}")
    found = {}
    for offset, node_id in enumerate(nodes):
        record = records[first + offset]
        if record["node_id"] != node_id:
            raise CheckpointCorruptError(
                path, f"result record {first + offset} is of node {record['node_id']!r}, but "
                f"checkpoint {delta.checkpoint_id} says {node_id!r}")
        found[node_id] = record
    return found
