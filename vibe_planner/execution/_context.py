"""What node handlers receive and how failed attempts are retried."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .._models import TokenUsage, Vibe, WorkflowNode
from .._retry import RetryPolicy

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

    def add_usage(self, usage: TokenUsage) -> None:
        """Record LLM tokens spent by this attempt (summed into the node's and run's usage)."""
        self.usage = usage if self.usage is None else self.usage + usage


Handler = Callable[[NodeContext], Awaitable[Any]]
"""An async callable that runs a node and returns its output (any JSON value)."""
