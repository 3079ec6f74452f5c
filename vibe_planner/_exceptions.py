"""Every exception vibe_planner raises, in one tree.

```
VibePlannerError
├── InvalidVibeError              (also ValueError)  a vibe that cannot be planned
├── InvalidIdentifierError        (also ValueError)  a hostile or malformed plan/checkpoint id
├── InvalidMetadataError          (also ValueError)  run metadata that cannot be stored as JSON
├── PlanValidationError           (also ValueError)  a plan that is not a valid DAG
├── PlanningError                                    the planner could not produce a valid plan
├── NodeError                                       raised by node handlers to steer retries
│   └── StrayCancellationError                      a handler let out a stray cancellation
├── NodeOutputError               (also TypeError)   a node returned something that is not JSON
├── PlanLockedError                                  another process is running this plan
│   └── StaleLeaseError                              a write under a lease since expired and taken over
└── CheckpointError
    ├── CheckpointNotFoundError   (also LookupError) no checkpoint with that id
    ├── CheckpointCorruptError                       a checkpoint or journal file cannot be trusted
    ├── CheckpointMismatchError                      the checkpoint belongs to another vibe or plan
    ├── UnsafeCheckpointFolderError (also PermissionError) another user could have written it
    ├── CheckpointWriteError      (also OSError)     the disk refused a checkpoint write
    └── StoreUnavailableError     (also ConnectionError) the store (a database) cannot be reached
```

Messages are built from the attributes, so callers can act on `path`, `reason`, `node_ids` and
friends while logs still say what went wrong and where.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "InvalidIdentifierError",
    "InvalidMetadataError",
    "InvalidVibeError",
    "NodeError",
    "NodeOutputError",
    "PlanLockedError",
    "PlanValidationError",
    "PlanningError",
    "StaleLeaseError",
    "StoreUnavailableError",
    "StrayCancellationError",
    "UnsafeCheckpointFolderError",
    "VibePlannerError",
]


class VibePlannerError(Exception):
    """Root of every error raised by vibe_planner."""


class InvalidVibeError(VibePlannerError, ValueError):
    """The vibe is malformed (empty description, wrong types, ...).

    Attributes:
        errors: One human-readable line per problem.

    """

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid vibe: " + "; ".join(self.errors))


class InvalidIdentifierError(VibePlannerError, ValueError):
    """A plan id or checkpoint id is malformed or could escape the checkpoint folder.

    Attributes:
        kind: ``"plan_id"`` or ``"checkpoint_id"``.
        value: The rejected value (shortened in the message).
        reason: Why it was rejected.

    """

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {kind} {shown}: {reason}")


class InvalidMetadataError(VibePlannerError, ValueError):
    """Metadata passed to a run cannot be stored in a checkpoint (not JSON, too deep).

    Attributes:
        reason: What is wrong with it.

    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid metadata: {reason}")


class PlanValidationError(VibePlannerError, ValueError):
    """A workflow plan is not a valid DAG.

    Attributes:
        problems: One line per problem found.
        node_ids: The nodes involved, in a stable order.

    """

    def __init__(self, problems: Sequence[str], node_ids: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        self.node_ids = list(dict.fromkeys(node_ids))
        super().__init__("invalid workflow plan: " + "; ".join(self.problems))


class PlanningError(VibePlannerError):
    """The planner could not produce a valid plan.

    Attributes:
        reason: What went wrong.
        last_reply: The planner's last raw reply, if any.
        errors: The validation errors of each attempt, oldest first.

    """

    def __init__(
        self, reason: str, *, last_reply: str | None = None, errors: Sequence[str] = ()
    ) -> None:
        self.reason = reason
        self.last_reply = last_reply
        self.errors = list(errors)
        detail = f" (last error: {self.errors[-1]})" if self.errors else ""
        super().__init__(f"planning failed: {reason}{detail}")


class NodeError(VibePlannerError):
    """Raised by a node handler to say whether its failure is worth retrying.

    Any other exception from a handler is retried (up to the node's attempts); raise
    ``NodeError(..., retryable=False)`` for failures that will not go away (bad input, a 401),
    and pass ``retry_after`` (seconds) when the remote side said how long to wait.

    Attributes:
        message: What went wrong.
        retryable: Whether another attempt may succeed.
        retry_after: Minimum seconds to wait before the next attempt, if known.

    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message)


class StrayCancellationError(NodeError):
    """A handler let out a cancellation although nothing cancelled the run.

    Typically it awaited a task it had cancelled itself. The node fails with this error
    (retried like any other failure) instead of the run looking complete without it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class NodeOutputError(VibePlannerError, TypeError):
    """A node handler returned a value that cannot be stored as JSON.

    Attributes:
        node_id: The node whose output was rejected.
        reason: What the JSON encoder said.

    """

    retryable = False

    def __init__(self, node_id: str, reason: str) -> None:
        self.node_id = node_id
        self.reason = reason
        super().__init__(f"node {node_id!r} returned an output that is not JSON: {reason}")


class PlanLockedError(VibePlannerError):
    """Another process (or another run in this one) is executing the plan.

    Attributes:
        plan_id: The plan that is busy.
        path: The lock file.
        holder: What the lock file says about its holder (pid, host), if readable.

    """

    def __init__(self, plan_id: str, path: Path, holder: str | None) -> None:
        self.plan_id = plan_id
        self.path = path
        self.holder = holder
        who = f" by {holder}" if holder else ""
        super().__init__(f"plan {plan_id!r} is being run{who} (lock: {path})")


class StaleLeaseError(PlanLockedError):
    """A write (or renewal) under a lease that is no longer the plan's current one was refused.

    A lease that is not renewed in time expires and another worker may take the plan over;
    from then on the store refuses everything the old holder sends, so a paused or cut-off
    process can never fork the plan's checkpoint chain. The run that gets this stops.

    Attributes:
        plan_id: The plan.
        path: Where the plan lives (for messages).
        token: The fencing token of the stale lease.
        current: The token of the lease that replaced it (``None``: released, nobody holds it).
        holder: Who holds the current lease, if anyone.

    """

    def __init__(self, plan_id: str, path: Path, token: int, current: int | None,
                 holder: str | None) -> None:
        self.plan_id = plan_id
        self.path = path
        self.token = token
        self.current = current
        self.holder = holder
        now = "nobody holds it now" if current is None else f"lease {current} of {holder} replaced it"
        VibePlannerError.__init__(
            self, f"lease {token} of plan {plan_id!r} is no longer held ({now}); "
            f"the write was refused (lease: {path})")


class CheckpointError(VibePlannerError):
    """Base class of checkpoint problems."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """No checkpoint with this id (or no checkpoint at all for this plan).

    Attributes:
        checkpoint_id: The id asked for, or ``None`` when looking for the latest of a plan.
        plan_id: The plan searched, if known.

    """

    def __init__(self, checkpoint_id: str | None, plan_id: str | None = None) -> None:
        self.checkpoint_id = checkpoint_id
        self.plan_id = plan_id
        if checkpoint_id is None:
            message = f"no checkpoint for plan {plan_id!r}"
        elif plan_id is None:
            message = f"checkpoint {checkpoint_id!r} not found"
        else:
            message = f"checkpoint {checkpoint_id!r} not found in plan {plan_id!r}"
        super().__init__(message)


class CheckpointCorruptError(CheckpointError):
    """A checkpoint or journal file cannot be trusted. Nothing was deleted or overwritten.

    Attributes:
        path: The damaged file.
        reason: What is wrong with it.

    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"corrupt checkpoint file {str(path)!r}: {reason}")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint exists for this plan id but records a different vibe or plan.

    Attributes:
        plan_id: The plan id both share.
        reason: What differs.

    """

    def __init__(self, plan_id: str, reason: str) -> None:
        self.plan_id = plan_id
        self.reason = reason
        super().__init__(f"checkpoints of plan {plan_id!r} do not match: {reason}")


class UnsafeCheckpointFolderError(CheckpointError, PermissionError):
    """A checkpoint folder or file could have been written by someone else; nothing was read.

    Like ssh with a key file, vibe_planner refuses to resume from (or write to) a plan whose
    folder, checkpoint root or files belong to another user (root excepted) or are writable
    by group or others: anyone who can write there can plant the state a resume trusts.

    Attributes:
        path: The folder or file that is not safe.
        reason: Who owns it or which permission bits are wrong, and how to fix it.

    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"unsafe checkpoint location {str(path)!r}: {reason}")


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint or journal record failed; the previous files are intact.

    Attributes:
        path: The file that could not be written.
        reason: The operating system's explanation.

    """

    def __init__(self, path: Path, reason: str, *, errno_: int | None = None) -> None:
        self.path = path
        self.reason = reason
        args: tuple[Any, ...] = (f"cannot write checkpoint file {str(path)!r}: {reason}",)
        super().__init__(*args)
        self.errno = errno_


class StoreUnavailableError(CheckpointError, ConnectionError):
    """The checkpoint store could not be reached or refused the request (a database's error).

    The message never holds the password of the store's address.

    Attributes:
        where: The store, as `CheckpointStore.describe` names it (no password).
        reason: What the store or the driver said.

    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"checkpoint store {where} is unavailable: {reason}")
