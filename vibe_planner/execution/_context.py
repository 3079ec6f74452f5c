"""What node handlers receive and how failed attempts are retried."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .._models import TokenUsage, Vibe, WorkflowNode
from .._retry import RetryPolicy

if TYPE_CHECKING:
    from ._input import InputDesk

NO_DEFAULT: Any = type("NoDefault", (), {"__repr__": lambda self: "NO_DEFAULT"})()
"""Stands for "no default" in `NodeContext.request_input` (``None`` is a valid default)."""

__all__ = ["Handler", "NodeContext", "RetryPolicy"]


@dataclass(slots=True)
class NodeContext:
    """Everything a node handler gets to do its work.

    Attributes:
        node: The node to run.
        inputs: Outputs of the node's dependencies, by node id (JSON values).
        vibe: The vibe the plan was made for.
        plan_id: The plan being run.
        run_id: The current run (changes on resume; do not use it for idempotency).
        attempt: 1 for the first attempt, 2 for the first retry, ...
        idempotency_key: ``<plan_id>:<node_id>``, stable across attempts, runs and resumes:
            pass it to external systems so a node re-run after a crash does not act twice.

    """

    node: WorkflowNode
    inputs: dict[str, Any]
    vibe: Vibe
    plan_id: str
    run_id: str
    attempt: int
    idempotency_key: str
    usage: TokenUsage | None = field(default=None)
    desk: InputDesk | None = field(default=None, repr=False)
    """The run's input requests (set by the scheduler; ``None`` outside a run)."""
    asked: int = 0
    """Questions this attempt has asked so far (numbers the requests: ``<node_id>:<n>``)."""

    def add_usage(self, usage: TokenUsage) -> None:
        """Record LLM tokens spent by this attempt (summed into the node's and run's usage)."""
        self.usage = usage if self.usage is None else self.usage + usage

    async def request_input(
        self,
        prompt: str,
        *,
        schema: Any = None,
        expires_after: float | timedelta | None = None,
        default: Any = NO_DEFAULT,
        key: str | None = None,
    ) -> Any:
        """Ask a person for an answer; return it once it is recorded (see docs/human-in-the-loop.md).

        The first time, this ends the attempt: the node waits (other branches go on), the run
        ends ``waiting`` once nothing else can run, and after `MetaPlanner.respond` records an
        answer the handler runs again *from the top* and this call returns the answer at once.
        Keep what comes before the question idempotent (use `idempotency_key`).

        Args:
            prompt: The question.
            schema: A JSON Schema (a dict, in the subset `vibe_planner.execution._schema`
                supports) or a type pydantic can describe (a model, ``bool``, ...); the answer
                is validated against it, and returned as that type. ``None``: any JSON value.
            expires_after: Seconds (or a `timedelta`) from when it is first asked until it
                expires (``None``: never).
            default: The answer taken at the deadline; without one the node then fails with
                `RequestExpiredError`.
            key: Names the request (``<node_id>:<key>``) instead of its number in the attempt.

        """
        if self.desk is None:
            raise RuntimeError("request_input needs a running plan (this context was not made by a run)")
        self.asked += 1
        return self.desk.ask(self, prompt, schema=schema, expires_after=expires_after, default=default,
                             key=key)


Handler = Callable[[NodeContext], Awaitable[Any]]
"""An async callable that runs a node and returns its output (any JSON value)."""
