"""Human input: a node asks a person, the run waits without holding a process, an answer resumes it.

How it works (docs/human-in-the-loop.md has the user's view):

- `NodeContext.request_input` calls `InputDesk.ask`. With no answer recorded yet, the request is
  added to the run's state and `InputPending` ends the attempt: the scheduler records the node
  as ``waiting`` (not failed, not retried) and keeps running every other branch. When nothing
  else can run, the run ends ``waiting``, its last checkpoint listing the pending requests.
- An answer is recorded by `MetaPlanner.respond`: into the live run if the plan is running in
  this process (`InputDesk.answer`: the node is queued again at once), else as a new checkpoint
  (`vibe_planner.execution._respond`). Either way `take_answer` checks it first.
- The node's handler then runs again from the top, and `ask` returns the recorded answer.

`InputPending` is a `BaseException`, like a cancellation, so that a handler's ``except
Exception`` cannot swallow the pause; it never leaves the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import orjson
import pydantic

from .._exceptions import (
    ApprovalRejectedError,
    InvalidAnswerError,
    InvalidIdentifierError,
    InvalidInputSchemaError,
    PlanNotWaitingError,
    RequestAlreadyAnsweredError,
    RequestExpiredError,
    UnknownRequestError,
)
from .._ids import check_plan_id
from .._models import InputRequest, encode_json_bounded
from .._state import RunState
from ._context import NO_DEFAULT
from ._schema import check_schema, validate

if TYPE_CHECKING:
    from ._context import NodeContext

__all__ = [
    "APPROVAL_SCHEMA",
    "InputDesk",
    "InputPending",
    "approval_handler",
    "check_answer_ids",
    "pending_requests",
    "pending_signal",
    "take_answer",
]

APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approved"],
    "additionalProperties": False,
}
"""What an ``approval`` node asks for: ``{"approved": true|false, "comment": "..."}``."""

MAX_ANSWER_BYTES = 1_000_000
"""Largest answer taken (its JSON): an answer is stored in every later checkpoint of the plan."""

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ID_CHARS = _KEY_CHARS | frozenset(".:")
_MAX_ID = 200


class InputPending(BaseException):
    """Ends a handler's attempt because it waits for a person's answer (internal)."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(request_id)


def pending_signal(exc: BaseException) -> InputPending | None:
    """Return the `InputPending` that *exc* is (or that is all an exception group holds)."""
    if isinstance(exc, InputPending):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(InputPending)
        if match is not None and rest is None:
            leaves: list[BaseException] = [match]
            while isinstance(leaves[0], BaseExceptionGroup):
                leaves = list(leaves[0].exceptions)
            first = leaves[0]
            return first if isinstance(first, InputPending) else None
    return None


def check_answer_ids(plan_id: object, request_id: object) -> None:
    """Raise `InvalidIdentifierError` unless both ids have the right shape (nothing is read)."""
    check_plan_id(plan_id)
    if not isinstance(request_id, str) or not 3 <= len(request_id) <= _MAX_ID \
            or not _ID_CHARS.issuperset(request_id) or ":" not in request_id[1:-1]:
        raise InvalidIdentifierError("request_id", request_id, "expected <node_id>:<n> (letters, "
                                     f"digits, '_.:-', at most {_MAX_ID} characters)")


def pending_requests(requests: dict[str, InputRequest], completed: set[str]) -> list[InputRequest]:
    """Return the requests still waiting for an answer (those of completed nodes are moot)."""
    return [r for r in requests.values() if r.status == "pending" and r.node_id not in completed]


def take_answer(
    requests: dict[str, InputRequest], completed: set[str], plan_id: str, request_id: str,
    value: Any, now: datetime,
) -> InputRequest:
    """Check an answer to *request_id*, store it in *requests* and return the answered request.

    Raises the `InputRequestError` that says why it cannot be taken; *requests* is then unchanged.
    """
    waiting = pending_requests(requests, completed)
    request = requests.get(request_id)
    if request is None:
        if not waiting:
            raise PlanNotWaitingError(plan_id, request_id, "it has no pending request")
        raise UnknownRequestError(plan_id, request_id, [r.id for r in waiting])
    if request.status == "answered" or request.node_id in completed:
        raise RequestAlreadyAnsweredError(plan_id, request_id, request.answered_at)
    if request.status == "expired" or (request.deadline is not None and now >= request.deadline):
        assert request.deadline is not None
        raise RequestExpiredError(plan_id, request_id, request.deadline)
    try:
        size = len(encode_json_bounded(value))
    except TypeError as exc:
        raise InvalidAnswerError(plan_id, request_id, [f"$: not a JSON value ({exc})"]) from None
    if size > MAX_ANSWER_BYTES:
        raise InvalidAnswerError(plan_id, request_id,
                                 [f"$: {size} bytes of JSON; at most {MAX_ANSWER_BYTES} are taken"])
    problems = validate(value, request.json_schema)
    if problems:
        raise InvalidAnswerError(plan_id, request_id, problems)
    answered = request.model_copy(update={"status": "answered", "answer": value, "answered_at": now})
    requests[request_id] = answered
    return answered


class InputDesk:
    """The input requests of one run: asks for the nodes, takes answers while the run is live.

    Args:
        state: The run's state (its ``requests`` table is the one source of truth).
        clock: Returns the current time (aware, UTC); injectable for tests.
        on_answered: Called with the node id and request id when an answer is taken here, or
            first seen by the node (the run emits its ``answered`` event).

    """

    def __init__(
        self, state: RunState, *, clock: Callable[[], datetime],
        on_answered: Callable[[str, str], None] | None = None,
    ) -> None:
        self._state = state
        self.clock = clock
        self._on_answered = on_answered
        self._announced: set[str] = set()
        self._changed = anyio.Event()
        self._watch = anyio.CancelScope()

    # -- deadlines while the run is live ----------------------------------------------------------
    def suspended_changed(self) -> None:
        """Say a node started waiting (its request may have the soonest deadline)."""
        self._changed.set()

    def stop_watching(self) -> None:
        """End `watch_deadlines` (the run is over: no node can start any more)."""
        self._watch.cancel()

    async def watch_deadlines(self, suspended: Mapping[str, str], wake: Callable[[str], bool]) -> None:
        """Wake each waiting node when its request expires, while other branches still run.

        The woken node runs again, finds its request expired and takes its default or fails,
        as it would on a resume after the deadline. Ends with `stop_watching`.
        """
        with self._watch:
            while True:
                await anyio.lowlevel.checkpoint()  # where `stop_watching` takes effect
                self._changed = changed = anyio.Event()
                due = {node_id: deadline for node_id, request_id in suspended.items()
                       if (deadline := self._state.requests[request_id].deadline) is not None}
                if not due:
                    await changed.wait()
                    continue
                now = self.clock()
                for node_id in [n for n, deadline in due.items() if deadline <= now]:
                    wake(node_id)
                if all(deadline <= now for deadline in due.values()):
                    continue
                delay = (min(d for d in due.values() if d > now) - now).total_seconds()
                with anyio.move_on_after(delay):
                    await changed.wait()

    def ask(
        self, context: NodeContext, prompt: str, *, schema: Any, expires_after: float | timedelta | None,
        default: Any, key: str | None,
    ) -> Any:
        """Return the recorded answer to the node's request, or raise `InputPending`."""
        node_id = context.node.id
        request_id = f"{node_id}:{key if key is not None else context.asked}"
        json_schema, adapter = self._schema(context.plan_id, request_id, schema)
        request = self._state.requests.get(request_id)
        now = self.clock()
        if request is None:
            request = self._new_request(context, request_id, prompt, json_schema, expires_after, default, now)
            self._state.requests[request_id] = request
            raise InputPending(request_id)
        if request.status == "pending" and request.deadline is not None and now >= request.deadline:
            request = request.model_copy(update={
                "status": "expired", "answered_at": now,
                "answer": request.default if request.has_default else None})
            self._state.requests[request_id] = request
        if request.status == "pending":
            raise InputPending(request_id)
        if request.status == "expired" and not request.has_default:
            assert request.deadline is not None
            raise RequestExpiredError(context.plan_id, request_id, request.deadline)
        if request.status == "answered":
            self.announce(node_id, request_id)
        # Its own copy: a handler that changes the answer changes nothing recorded.
        answer = orjson.loads(orjson.dumps(request.answer))
        return answer if adapter is None else adapter.validate_python(answer)

    def answer(self, plan_id: str, request_id: str, value: Any) -> InputRequest:
        """Take an answer for a request of this live run (checked by `take_answer`)."""
        state = self._state
        completed = {node_id for node_id in state.records if state.is_completed(node_id)}
        request = take_answer(state.requests, completed, plan_id, request_id, value, self.clock())
        self.announce(request.node_id, request_id)
        return request

    def announce(self, node_id: str, request_id: str) -> None:
        """Report an answer once per run."""
        if request_id not in self._announced:
            self._announced.add(request_id)
            if self._on_answered is not None:
                self._on_answered(node_id, request_id)

    def _schema(
        self, plan_id: str, request_id: str, schema: Any
    ) -> tuple[dict[str, Any], pydantic.TypeAdapter[Any] | None]:
        """Return the JSON schema to record, and the adapter that types the answer, if any."""
        adapter = None
        if schema is None:
            json_schema: Any = {}
        elif isinstance(schema, dict):
            json_schema = schema
        else:
            try:
                adapter = pydantic.TypeAdapter(schema)
                json_schema = adapter.json_schema()
            except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError) as exc:
                raise InvalidInputSchemaError(plan_id, request_id, f"{schema!r}: {exc}") from None
        try:
            check_schema(json_schema)
            encode_json_bounded(json_schema)
        except (ValueError, TypeError) as exc:
            raise InvalidInputSchemaError(plan_id, request_id, str(exc)) from None
        return json_schema, adapter

    def _new_request(
        self, context: NodeContext, request_id: str, prompt: str, json_schema: dict[str, Any],
        expires_after: float | timedelta | None, default: Any, now: datetime,
    ) -> InputRequest:
        if key_problem := _key_problem(request_id.rpartition(":")[2]):
            raise InvalidInputSchemaError(context.plan_id, request_id, key_problem)
        has_default = default is not NO_DEFAULT
        if has_default:
            try:
                encode_json_bounded(default)
            except TypeError as exc:
                raise InvalidInputSchemaError(context.plan_id, request_id,
                                              f"the default is not JSON: {exc}") from None
            problems = validate(default, json_schema)
            if problems:
                raise InvalidInputSchemaError(context.plan_id, request_id,
                                              "the default does not match the schema: " + "; ".join(problems))
        deadline = None
        if expires_after is not None:
            delta = expires_after if isinstance(expires_after, timedelta) \
                else timedelta(seconds=expires_after)
            deadline = now + delta
        return InputRequest(
            id=request_id, node_id=context.node.id, prompt=str(prompt)[:20_000], json_schema=json_schema,
            asked_at=now, deadline=deadline, has_default=has_default,
            default=default if has_default else None,
        )


def _key_problem(key: str) -> str | None:
    if not key or len(key) > 64 or not _KEY_CHARS.issuperset(key):
        return f"request key {key!r} must be 1 to 64 letters, digits, '_' or '-'"
    return None


async def approval_handler(context: NodeContext) -> Any:
    """Ask a person to approve the results of the node's dependencies (the ``approval`` kind).

    The question is the node's ``instructions`` (or a default naming its dependencies); the
    answer follows `APPROVAL_SCHEMA`. Approved, the node's output is the answer; rejected, the
    node fails with `ApprovalRejectedError` (no retry) and the steps after it are skipped.
    Parameters: ``expires_after`` (seconds until the request expires), ``default`` (the
    answer taken then; without one the node fails at the deadline).
    """
    node = context.node
    prompt = node.instructions or f"Approve the results of {', '.join(node.depends_on) or 'this plan'}?"
    expires = node.parameters.get("expires_after")
    answer = await context.request_input(
        prompt, schema=APPROVAL_SCHEMA, default=node.parameters.get("default", NO_DEFAULT),
        expires_after=float(expires) if isinstance(expires, int | float) else None,
    )
    if not answer["approved"]:
        comment = answer.get("comment")
        raise ApprovalRejectedError(node.id, f"{node.id}:{context.asked}", comment)
    return answer
