r"""The checkpoint and journal codecs (orjson), with integrity checks and schema migration.

A checkpoint document is the canonical JSON (sorted keys) of its fields followed by a
``checksum`` field holding ``sha256:<hex>`` of those canonical bytes. Decoding hashes the stored
bytes when they are laid out as `encode_checkpoint` writes them, and otherwise re-encodes the
parsed fields canonically; either way any changed byte that still parses is caught.

A journal is one record per line: ``<crc32 hex> <json>\\n``. A line that is cut short or fails
its CRC ends the trusted part of the journal: everything before it is used, nothing after it.
Each record is ``{"run": <run_id>, "result": <node result>}``. A resumed run that appends to its
journal before its own first snapshot is durable starts it with a header,
``{"run": <run_id>, "resumed_from": <checkpoint_id>}``: until that snapshot exists, the header
is what ties the journal to the checkpoint it continues (see `WorkflowPersistenceManager`).
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Callable, Container, Iterable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pydantic

from .._exceptions import CheckpointCorruptError, PlanValidationError
from .._models import SCHEMA_VERSION, Checkpoint, NodeStatus, ResultRecord, ResumePoint
from .._state import Capture, RunState, utcnow
from ._compression import decompress

__all__ = [
    "DELTA_HEAD",
    "DeltaFound",
    "JournalRead",
    "checkpoint_fields",
    "checksum_of",
    "is_canonical",
    "check_consistency",
    "decode_checkpoint",
    "decode_resume_point",
    "decode_journal",
    "encode_checkpoint",
    "encode_journal",
    "first_error",
    "header_continues",
    "journal_continues",
    "journal_entries",
    "journal_results",
    "parse_verified",
    "peek_summary",
]

_SORTED = orjson.OPT_SORT_KEYS
_RECORD = pydantic.TypeAdapter(ResultRecord)
_RECORDS = pydantic.TypeAdapter(list[ResultRecord])
_Document = TypeVar("_Document", Checkpoint, ResumePoint)
_CHECKSUM_PREFIX = "sha256:"
_TAIL_HEAD = b',"checksum":"' + _CHECKSUM_PREFIX.encode()
_TAIL_LENGTH = len(_TAIL_HEAD) + 64 + len(b'"}')
# `int(x, 16)` also takes " 1f", "+1f", "1_f" and "1F": only what `encode_journal` writes counts.
_CRC_DIGITS = frozenset(b"0123456789abcdef")

DELTA_HEAD = b'{"base":'
"""How a delta written by this codec starts (``base`` is its first key in sorted order)."""


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """Return a version-1 document as version 2: it is a base, the whole state."""
    return {**document, "schema_version": 2, "kind": "base"}


# Each entry upgrades a raw document from version N to N + 1. Version 1 is the first.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def checkpoint_fields(
    state: RunState, capture: Capture, *, checkpoint_id: str, sequence: int, reason: str
) -> dict[str, Any]:
    """Return the fields of the checkpoint document of *capture* (run in a worker thread).

    This is the document's layout, at `SCHEMA_VERSION`; `encode_checkpoint` makes its bytes.
    Every plan node goes in exactly one of the completed, pending and failed lists.
    """
    completed, failed, pending = [], [], []
    for node_id in state.plan.order:
        status = capture.records.get(node_id, {}).get("status")
        if status == NodeStatus.COMPLETED:
            completed.append(node_id)
        elif status == NodeStatus.FAILED:
            failed.append(node_id)
        else:
            pending.append(node_id)
    plan_json, vibe_json = state.encoded_plan()
    fields: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "base",
        "checkpoint_id": checkpoint_id,
        "sequence": sequence,
        "plan_id": state.plan.plan_id,
        "run_id": state.run_id,
        "created_at": utcnow(),
        "reason": reason,
        "vibe": vibe_json,
        "workflow_plan": plan_json,
        "completed_nodes": completed,
        "pending_nodes": pending,
        "failed_nodes": failed,
        "node_results": capture.records,
        "usage": capture.usage.model_dump(),
        "metadata": capture.metadata,
    }
    if capture.requests:  # absent when there are none: such documents read as before
        fields["input_requests"] = [r.model_dump(mode="json") for r in capture.requests]
    return fields


def encode_checkpoint(fields: dict[str, Any]) -> bytes:
    """Return the bytes of a checkpoint document made of *fields* plus its checksum.

    The bytes are those of ``orjson.dumps(fields, option=OPT_SORT_KEYS)`` with the checksum
    spliced in before the closing brace, but made a piece at a time: each field, and a big
    mapping (the node results) `_SLICE` entries at a time, each piece hashed as soon as it
    is made. A writer thread thus holds the GIL for one short orjson call at a time, and
    hashing a piece releases it: the event loop never waits for a whole document's encoding
    (which takes milliseconds for a large plan).
    """
    digest = hashlib.sha256()
    pieces: list[bytes | memoryview] = []

    def add(piece: bytes | memoryview) -> None:
        digest.update(piece)
        pieces.append(piece)

    add(b"{")
    for index, key in enumerate(sorted(fields)):
        if index:
            add(b",")
        value = fields[key]
        if isinstance(value, dict) and len(value) > _SLICE:
            add(orjson.dumps(key) + b":")
            _add_mapping(value, add)
        else:
            add(_members(orjson.dumps({key: value}, option=_SORTED)))
    digest.update(b"}")
    pieces.append(_TAIL_HEAD + digest.hexdigest().encode() + b'"}')  # what `is_canonical` reads
    return b"".join(pieces)


# Entries of a big mapping encoded per orjson call: with 1 KB node outputs, ~64 KB (tens of
# microseconds), over hashlib's 2 KB threshold for releasing the GIL while hashing.
_SLICE = 64


def _add_mapping(mapping: dict[str, Any], add: Callable[[bytes | memoryview], None]) -> None:
    """Add the canonical JSON of *mapping*, encoding `_SLICE` entries at a time."""
    keys = sorted(mapping)
    add(b"{")
    for start in range(0, len(keys), _SLICE):
        if start:
            add(b",")
        part = {key: mapping[key] for key in keys[start : start + _SLICE]}
        add(_members(orjson.dumps(part, option=_SORTED)))
    add(b"}")


def _members(encoded: bytes) -> memoryview:
    """Return the members of an encoded JSON object: ``{"a":1,"b":2}`` gives ``"a":1,"b":2``."""
    return memoryview(encoded)[1:-1]


def checksum_of(encoded: bytes) -> str:
    """Return the checksum `encode_checkpoint` wrote at the end of *encoded*."""
    return _CHECKSUM_PREFIX + encoded[-66:-2].decode()


def decode_checkpoint(raw: bytes, path: Path) -> Checkpoint:
    """Parse, verify and validate a base (or version-1) document, or raise `CheckpointCorruptError`.

    A delta is read with its chain, by `WorkflowPersistenceManager` (see `_chain`).
    """
    return _decode(Checkpoint, raw, path)


def decode_resume_point(raw: bytes, path: Path) -> ResumePoint:
    """Like `decode_checkpoint`, keeping node results as the records a resume restores."""
    return _decode(ResumePoint, raw, path)


def _decode(model: type[_Document], raw: bytes, path: Path) -> _Document:
    """Verify integrity once; validate the bytes (fast path) or else the parsed document."""
    raw = decompress(raw, path)
    encoded = is_canonical(raw)  # the checksum of a canonical layout, checked on the bytes
    if encoded and not raw.startswith(DELTA_HEAD):
        # The bytes are exactly what `encode_checkpoint` wrote: validate them straight from
        # JSON, which skips building the parsed document (half the time of a large resume).
        try:
            checkpoint = model.model_validate_json(raw)
        except (pydantic.ValidationError, PlanValidationError):
            pass  # the slow path below says what is wrong, or copes (deep nesting)
        else:
            if checkpoint.schema_version == SCHEMA_VERSION and checkpoint.kind == "base":
                check_consistency(checkpoint, path)
                return checkpoint
    # Not canonical (reformatted, say), an older version to migrate, deeper than pydantic's
    # JSON parser goes, or invalid: parse it (the parse says what is wrong with a file that
    # is not a checkpoint at all) and validate the parsed document. The checksum is not
    # checked twice: the bytes of a canonical layout were checked above.
    data = parse_verified(raw, path, verified=encoded)
    if data.get("kind") == "delta":
        raise DeltaFound(path, data)
    if data.get("kind") != "base":
        raise CheckpointCorruptError(path, f"unknown kind {data.get('kind')!r} (not a base or a delta)")
    return validate_document(model, data, path)


class DeltaFound(CheckpointCorruptError):
    """Raised by the decoders of whole documents when given a delta (read it with its chain)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        super().__init__(path, "a delta checkpoint: its state is read with its chain, "
                         "by WorkflowPersistenceManager")
        self.data = data


def validate_document(model: type[_Document], data: dict[str, Any], path: Path) -> _Document:
    """Validate a parsed (or assembled) document, then check that its fields agree."""
    try:
        checkpoint = model.model_validate(data)
    except pydantic.ValidationError as exc:
        problem = f"does not match the checkpoint schema: {first_error(exc)}"
        raise CheckpointCorruptError(path, problem) from None
    except PlanValidationError as exc:
        raise CheckpointCorruptError(path, f"its plan is invalid: {exc}") from None
    check_consistency(checkpoint, path)
    return checkpoint


def peek_summary(raw: bytes, path: Path) -> dict[str, Any]:
    """Return the summary fields of a checkpoint after integrity checks, without full validation.

    For a delta the node counts are those it records; its chain is not read.
    """
    raw = decompress(raw, path)
    data = parse_verified(raw, path, verified=is_canonical(raw))
    delta = data.get("kind") == "delta"
    try:
        counts = data["counts"] if delta else {
            "completed": len(data["completed_nodes"]), "total": len(data["workflow_plan"]["nodes"])}
        return {
            "base": str(data["base"] if delta else data["checkpoint_id"]),
            "checkpoint_id": str(data["checkpoint_id"]),
            "plan_id": str(data["plan_id"]),
            "run_id": str(data["run_id"]),
            "sequence": int(data["sequence"]),
            "created_at": data["created_at"],
            "reason": str(data["reason"]),
            "completed_nodes": int(counts["completed"]),
            "total_nodes": int(counts["total"]),
            "waiting_for": _waiting_for(data, delta=delta),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointCorruptError(path, f"missing or malformed field {exc}") from None


def _waiting_for(data: dict[str, Any], *, delta: bool) -> list[str]:
    """Return the ids of a document's pending input requests (of nodes not completed).

    A base lists its completed nodes; a delta does not (they are its chain's), so it records
    the ids itself, in ``waiting_for``.
    """
    if delta:
        waiting = data.get("waiting_for", [])
        if not isinstance(waiting, list) or not all(isinstance(i, str) for i in waiting):
            raise TypeError("'waiting_for'")
        return waiting
    completed = set(data["completed_nodes"])
    return [str(r["id"]) for r in data.get("input_requests", ())
            if r.get("status") == "pending" and r.get("node_id") not in completed]


def parse_verified(raw: bytes, path: Path, *, verified: bool) -> dict[str, Any]:
    """Parse a document, check its checksum (unless *verified* on its bytes), migrate it."""
    if not raw:
        raise CheckpointCorruptError(path, "empty file")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CheckpointCorruptError(path, f"not valid JSON (truncated or damaged): {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointCorruptError(path, f"top level is a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointCorruptError(path, "no integer schema_version: not a vibe_planner checkpoint")
    if version > SCHEMA_VERSION or version < 1:
        raise CheckpointCorruptError(
            path,
            f"unsupported schema_version {version} (this release reads 1 to {SCHEMA_VERSION}; "
            "a newer vibe_planner may have written it)",
        )
    checksum = data.pop("checksum", None)
    if not isinstance(checksum, str) or not checksum.startswith(_CHECKSUM_PREFIX):
        raise CheckpointCorruptError(path, "missing or malformed checksum")
    if not verified:
        # Not laid out as `encode_checkpoint` writes it (reformatted, say): the checksum is
        # then checked against the canonical encoding of what was parsed.
        actual = _CHECKSUM_PREFIX + hashlib.sha256(orjson.dumps(data, option=_SORTED)).hexdigest()
        if actual != checksum:
            raise CheckpointCorruptError(path, f"checksum mismatch (stored {checksum}, computed {actual})")
    data["checksum"] = checksum
    document: dict[str, Any] = data
    while document["schema_version"] < SCHEMA_VERSION:
        document = _MIGRATIONS[document["schema_version"]](document)
    return document


def is_canonical(raw: bytes) -> bool:
    """Whether *raw* is a canonical body followed by the checksum of exactly those bytes.

    That is how `encode_checkpoint` lays a document out. Checking the digest of the bytes as
    stored is as strict as re-encoding the parsed document (any changed byte changes the
    digest), and much cheaper.
    """
    tail = raw[-_TAIL_LENGTH:]
    if len(raw) <= _TAIL_LENGTH or not tail.startswith(_TAIL_HEAD) or not tail.endswith(b'"}'):
        return False
    digest = hashlib.sha256(memoryview(raw)[: len(raw) - _TAIL_LENGTH])
    digest.update(b"}")
    return digest.hexdigest().encode() == tail[len(_TAIL_HEAD) : -2]


def check_consistency(cp: Checkpoint | ResumePoint, path: Path) -> None:
    """Raise `CheckpointCorruptError` unless the document's fields agree with each other."""
    problems = []
    if path.stem != cp.checkpoint_id:
        problems.append(f"file name says {path.stem!r} but the document says {cp.checkpoint_id!r}")
    if cp.workflow_plan.plan_id != cp.plan_id:
        problems.append(f"plan_id {cp.plan_id!r} differs from its plan's {cp.workflow_plan.plan_id!r}")
    if path.parent.name != cp.plan_id:
        problems.append(f"stored in folder {path.parent.name!r} but belongs to plan {cp.plan_id!r}")
    known = {node.id for node in cp.workflow_plan.nodes}
    unknown = sorted(set(cp.node_results) - known)
    if unknown:
        problems.append(f"results for unknown nodes {unknown[:5]}")
    for node_id in cp.completed_nodes:
        result = cp.node_results.get(node_id)
        status = None if result is None else result["status"] if isinstance(result, dict) else result.status
        if status != "completed":
            problems.append(f"node {node_id!r} listed as completed without a completed result")
            break
    problems.extend(_partition_problems(cp, known))
    if problems:
        raise CheckpointCorruptError(path, "; ".join(problems))


def _partition_problems(cp: Checkpoint | ResumePoint, known: set[str]) -> list[str]:
    """Say how the completed, pending and failed lists fail to hold every plan node once."""
    listed = [*cp.completed_nodes, *cp.pending_nodes, *cp.failed_nodes]
    if len(listed) == len(known) and set(listed) == known:
        return []
    problems = []
    missing = sorted(known.difference(listed))
    if missing:
        problems.append(f"nodes {missing[:5]} are in none of completed/pending/failed_nodes")
    strangers = sorted(set(listed) - known)
    if strangers:
        problems.append(f"node lists name nodes not in the plan: {strangers[:5]}")
    if len(listed) != len(set(listed)):
        twice = sorted(n for n, count in Counter(listed).items() if count > 1)
        problems.append(f"nodes {twice[:5]} are listed more than once")
    return problems


def first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "document"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']}{more}"


def journal_entries(
    run_id: str, results: Iterable[dict[str, Any]], *, resumed_from: str | None = None
) -> Iterable[dict[str, Any]]:
    """Return the journal entries of *results*, after a header if *resumed_from* is given."""
    if resumed_from is not None:
        yield {"run": run_id, "resumed_from": resumed_from}
    for result in results:
        yield {"run": run_id, "result": result}


def encode_journal(records: Iterable[dict[str, Any]]) -> bytes:
    """Return journal lines for *records*, each with its CRC."""
    lines = []
    for record in records:
        payload = orjson.dumps(record, option=_SORTED)
        lines.append(b"%08x %s\n" % (zlib.crc32(payload), payload))
    return b"".join(lines)


class JournalRead:
    """The trusted records of a journal and what was ignored after them."""

    def __init__(self, records: list[dict[str, Any]], ignored_bytes: int, problem: str | None) -> None:
        self.header: dict[str, Any] | None = None
        """The first entry, if it is a header (``resumed_from``) rather than a result."""
        if records and "resumed_from" in records[0] and "result" not in records[0]:
            self.header, records = records[0], records[1:]
        self.records = records
        """Result records (after the header) up to the first damaged line."""
        self.ignored_bytes = ignored_bytes
        """Bytes after the trusted part (a torn tail or damage), not used."""
        self.problem = problem
        """Why the rest was ignored, if anything was."""
        self.validated: dict[str, list[ResultRecord]] = {}
        """The records validated by `journal_results`, by run id."""


def decode_journal(raw: bytes) -> JournalRead:
    """Parse journal bytes, trusting records up to the first torn or damaged line."""
    records: list[dict[str, Any]] = []
    position = 0
    while position < len(raw):
        end = raw.find(b"\n", position)
        if end < 0:
            return JournalRead(records, len(raw) - position, "torn last record (no newline)")
        record = _decode_line(raw[position:end])
        if record is None:
            return JournalRead(records, len(raw) - position, f"damaged record at byte {position}")
        records.append(record)
        position = end + 1
    return JournalRead(records, 0, None)


def _decode_line(line: bytes) -> dict[str, Any] | None:
    if len(line) < 10 or line[8:9] != b" " or not _CRC_DIGITS.issuperset(line[:8]):
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = orjson.loads(payload)
    except (ValueError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def journal_continues(journal: JournalRead, run_id: str, checkpoint_id: str) -> bool:
    """Whether *journal* (of run *run_id*) says it continues the checkpoint *checkpoint_id*."""
    return header_continues(journal.header, run_id, {checkpoint_id})


def header_continues(header: dict[str, Any] | None, run_id: str, checkpoint_ids: Container[str]) -> bool:
    """Whether a journal header (of run *run_id*) names one of *checkpoint_ids* as continued."""
    return header is not None and header.get("run") == run_id and header.get("resumed_from") in checkpoint_ids


def journal_results(
    journal: JournalRead, run_id: str, known: set[str], path: Path
) -> list[ResultRecord]:
    """Validate the result records of a journal of run *run_id* (`CheckpointCorruptError` if bad).

    Validated once per `JournalRead` and run: a resume reads its chain's journal and then the
    records after it from the same read.
    """
    cached = journal.validated.get(run_id)
    if cached is not None:
        return cached
    raw = []
    for entry in journal.records:
        record = entry.get("result")
        if entry.get("run") != run_id or not isinstance(record, dict):
            raise CheckpointCorruptError(path, "journal record of another run or without result")
        node_id = record.get("node_id")
        if node_id not in known or record.get("status") != "completed":
            raise CheckpointCorruptError(path, f"journal record for unknown node {node_id!r}")
        raw.append(record)
    try:
        records = _RECORDS.validate_python(raw)  # one call for them all: much faster
    except pydantic.ValidationError:
        for record in raw:  # say which record is wrong
            try:
                _RECORD.validate_python(record)
            except pydantic.ValidationError as exc:
                where = f"journal record of node {record.get('node_id')!r}"
                raise CheckpointCorruptError(path, f"{where}: {first_error(exc)}") from None
        raise
    journal.validated[run_id] = records
    return records
