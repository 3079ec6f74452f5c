"""Every exception vibe_planner raises, in one tree.

```
VibePlannerError
├── InvalidVibeError              (also ValueError)  a vibe that cannot be planned
├── InvalidIdentifierError        (also ValueError)  a hostile or malformed plan/checkpoint id
├── InvalidMetadataError          (also ValueError)  run metadata that cannot be stored as JSON
├── PlanValidationError           (also ValueError)  a plan that is not a valid DAG
├── PlanningError                                    the planner could not produce a valid plan
├── NodeError                                       raised by node handlers to steer retries
│   ├── StrayCancellationError                      a handler let out a stray cancellation
│   └── ApprovalRejectedError                       a person rejected an ``approval`` node
├── InputRequestError                                a person's answer that cannot be taken
│   ├── InvalidAnswerError        (also ValueError)  the answer fails the request's JSON schema
│   ├── InvalidInputSchemaError   (also ValueError)  a handler asked with an unsupported schema
│   ├── UnknownRequestError       (also LookupError) the plan has no request with that id
│   ├── RequestAlreadyAnsweredError                  the request has its answer already
│   ├── RequestExpiredError                          the request's deadline has passed
│   └── PlanNotWaitingError                          the plan waits for no answer at all
├── NodeOutputError               (also TypeError)   a node returned something that is not JSON
├── PlanLockedError                                  another process is running this plan
│   └── StaleLeaseError                              a write under a lease since expired and taken over
├── PlanStateError                (also RuntimeError) the plan cannot do that now (running, idle)
├── ServerStoppingError           (also RuntimeError) the service is shutting down
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
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "ApprovalRejectedError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "InputRequestError",
    "InvalidAnswerError",
    "InvalidIdentifierError",
    "InvalidInputSchemaError",
    "InvalidMetadataError",
    "InvalidVibeError",
    "NodeError",
    "NodeOutputError",
    "PlanLockedError",
    "PlanNotWaitingError",
    "PlanStateError",
    "PlanValidationError",
    "PlanningError",
    "RequestAlreadyAnsweredError",
    "RequestExpiredError",
    "ServerStoppingError",
    "StaleLeaseError",
    "StoreUnavailableError",
    "StrayCancellationError",
    "UnknownRequestError",
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


class ApprovalRejectedError(NodeError):
    """A person answered an ``approval`` node's request with ``approved: false``.

    The node fails for good (no retry), so the steps that needed the approval are skipped.

    Attributes:
        node_id: The approval node.
        request_id: The request that was rejected.
        comment: What the person said, if anything.

    """

    def __init__(self, node_id: str, request_id: str, comment: str | None = None) -> None:
        self.node_id = node_id
        self.request_id = request_id
        self.comment = comment
        said = f": {comment}" if comment else ""
        super().__init__(f"node {node_id!r} was rejected (request {request_id!r}){said}",
                         retryable=False)


class InputRequestError(VibePlannerError):
    """Base class of the problems with a person's answer to a node's request.

    When one is raised by `MetaPlanner.respond`, nothing was recorded: the plan's checkpoints
    are as they were, and the request can still be answered (unless it expired).

    Attributes:
        plan_id: The plan the answer was for.
        request_id: The request, if one was named.

    """

    def __init__(self, plan_id: str, request_id: str | None, message: str) -> None:
        self.plan_id = plan_id
        self.request_id = request_id
        super().__init__(message)


class InvalidAnswerError(InputRequestError, ValueError):
    """An answer does not match the JSON schema of its request.

    Attributes:
        problems: One line per mismatch, each naming where in the answer (``$.comment``).

    """

    def __init__(self, plan_id: str, request_id: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(plan_id, request_id, f"answer to request {request_id!r} of plan "
                         f"{plan_id!r} does not match its schema: " + "; ".join(self.problems))


class InvalidInputSchemaError(InputRequestError, ValueError):
    """A handler asked for input with a schema outside the supported JSON Schema subset.

    The node fails for good (a bug in the handler, not something a retry fixes).

    Attributes:
        reason: What is not supported, and where in the schema.

    """

    retryable = False

    def __init__(self, plan_id: str, request_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(plan_id, request_id,
                         f"request {request_id!r} of plan {plan_id!r} has an unusable schema: {reason}")


class UnknownRequestError(InputRequestError, LookupError):
    """The plan has no request with this id (pending or answered).

    Attributes:
        pending: The ids of the plan's pending requests (what could be answered).

    """

    def __init__(self, plan_id: str, request_id: str, pending: Sequence[str]) -> None:
        self.pending = list(pending)
        waiting = f"; it waits for {', '.join(self.pending)}" if self.pending else ""
        super().__init__(plan_id, request_id,
                         f"plan {plan_id!r} has no request {request_id!r}{waiting}")


class RequestAlreadyAnsweredError(InputRequestError):
    """The request was answered already; its first answer stands.

    Attributes:
        answered_at: When the first answer was recorded (``None`` if it expired unanswered).

    """

    def __init__(self, plan_id: str, request_id: str, answered_at: datetime | None) -> None:
        self.answered_at = answered_at
        when = f" at {answered_at.isoformat()}" if answered_at is not None else ""
        super().__init__(plan_id, request_id,
                         f"request {request_id!r} of plan {plan_id!r} was already answered{when}")


class RequestExpiredError(InputRequestError):
    """The request's deadline passed before it was answered.

    Raised by `MetaPlanner.respond` for a late answer, and inside the run when the waiting node
    runs again after its deadline without a default (the node then fails for good).

    Attributes:
        deadline: When the request expired.

    """

    retryable = False

    def __init__(self, plan_id: str, request_id: str, deadline: datetime) -> None:
        self.deadline = deadline
        super().__init__(plan_id, request_id, f"request {request_id!r} of plan {plan_id!r} "
                         f"expired at {deadline.isoformat()} without an answer")


class PlanNotWaitingError(InputRequestError):
    """The plan waits for no answer (it has no pending request, or no checkpoint at all).

    Attributes:
        reason: Where the plan stands instead.

    """

    def __init__(self, plan_id: str, request_id: str | None, reason: str) -> None:
        self.reason = reason
        super().__init__(plan_id, request_id, f"plan {plan_id!r} is not waiting for an answer: {reason}")


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


class PlanStateError(VibePlannerError, RuntimeError):
    """The plan is not in a state that allows the operation (it runs, or it does not).

    Attributes:
        plan_id: The plan.
        reason: What is in the way, such as ``"is running already"``.

    """

    def __init__(self, plan_id: str, reason: str) -> None:
        self.plan_id = plan_id
        self.reason = reason
        super().__init__(f"plan {plan_id!r} {reason}")


class ServerStoppingError(VibePlannerError, RuntimeError):
    """The service is shutting down and accepts no new runs (try again on the next one)."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down and starts no new runs")


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
