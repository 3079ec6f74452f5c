"""`RetryPolicy`: the one backoff policy, for node retries and LLM requests alike.

Every wait before a retry comes from `RetryPolicy.delay`, and every ``Retry-After`` a server
sends goes through `RetryPolicy.cap_retry_after`, so the cap is applied in one place: a server
answering ``Retry-After: 86400`` cannot park a node, nor the shared rate limiter, for a day.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


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
        capped = self.cap_retry_after(retry_after)
        return wait if capped is None else max(wait, capped)

    def cap_retry_after(self, retry_after: float | None) -> float | None:
        """Return a server's ``Retry-After`` (seconds) as this policy honours it.

        Capped at ten times `max_delay`; ``None`` for no value or one that is not a finite,
        non-negative number (a hostile or broken header is ignored, never obeyed).
        """
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
            return None  # a handler's exception may carry anything
        if not math.isfinite(retry_after) or retry_after < 0:
            return None
        return min(float(retry_after), self.max_delay * 10)
