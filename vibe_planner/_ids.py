"""Validation of the identifiers that become file and folder names.

Plan ids and checkpoint ids end up in paths, so they are checked before any file is touched:
a plain ASCII name of bounded length, never ``..``, never a separator, never a NUL.
"""

from __future__ import annotations

import re

from ._exceptions import InvalidIdentifierError

__all__ = ["MAX_ID_LENGTH", "check_checkpoint_id", "check_node_id", "check_plan_id"]

MAX_ID_LENGTH = 128
_PLAN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NODE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
CHECKPOINT_ID = re.compile(r"cp-([0-9]{8,})-([0-9a-f]{12})")


def _check(kind: str, value: object, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifierError(kind, value, f"must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifierError(kind, value, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifierError(kind, value, f"longer than {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise InvalidIdentifierError(kind, value, "contains a NUL byte")
    if "/" in value or "\\" in value:
        raise InvalidIdentifierError(kind, value, "contains a path separator")
    if value == ".":
        raise InvalidIdentifierError(kind, value, "is '.'")
    if ".." in value:
        raise InvalidIdentifierError(kind, value, "contains '..'")
    if not pattern.fullmatch(value):
        raise InvalidIdentifierError(
            kind, value, f"must match {pattern.pattern} (ASCII letters, digits, '_', '.', '-')"
        )
    return value


def check_plan_id(value: object) -> str:
    """Return *value* if it is a safe plan id, else raise `InvalidIdentifierError`."""
    return _check("plan_id", value, _PLAN_ID)


def check_node_id(value: object) -> str:
    """Return *value* if it is a well-formed node id, else raise `InvalidIdentifierError`."""
    return _check("node_id", value, _NODE_ID)


def check_checkpoint_id(value: object) -> str:
    """Return *value* if it is a well-formed checkpoint id (``cp-<sequence>-<suffix>``)."""
    return _check("checkpoint_id", value, CHECKPOINT_ID)


def checkpoint_sequence(checkpoint_id: str) -> int:
    """Return the sequence number encoded in a (validated) checkpoint id."""
    match = CHECKPOINT_ID.fullmatch(checkpoint_id)
    if match is None:  # pragma: no cover - callers validate first
        raise InvalidIdentifierError("checkpoint_id", checkpoint_id, "malformed")
    return int(match.group(1))
