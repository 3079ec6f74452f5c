"""What node handlers receive and how failed attempts are retried."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .._models import TokenUsage, Vibe, WorkflowNode

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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and exponential backoff with jitter for failing nodes.

    The wait before attempt ``n + 1`` is ``min(max_delay, initial_delay * multiplier**(n-1))``,
    of which a random fraction up to ``jitter`` is taken off (so retries of many nodes spread
    out), and never less than a ``retry_after`` the failure asked for (itself capped at ten
    times ``max_delay``, so a hostile server cannot park a node for days).

    Example:
        >>> RetryPolicy(max_attempts=5, initial_delay=0.1).delay(3, jitter_draw=0.0)
        0.4

    """

    max_attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValueError(f"max_attempts must be within 1..100, got {self.max_attempts}")
        numbers = (self.initial_delay, self.max_delay, self.multiplier)
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError("delays and multiplier must be finite numbers")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def delay(
        self, attempt: int, *, retry_after: float | None = None, jitter_draw: float | None = None
    ) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based)."""
        try:
            base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        except OverflowError:
            base = self.max_delay
        draw = random.random() if jitter_draw is None else jitter_draw
        wait = base * (1 - self.jitter * draw)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay * 10))
        return wait
