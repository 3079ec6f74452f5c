"""A plan's progress events as the service keeps them: numbered, replayable, bounded.

Each plan the service runs has one `EventLog`. Events get ids ``<epoch>-<n>``: *n* counts up
from 1 within the log, and the epoch (random per log) tells a client reconnecting after a
server restart that its ``Last-Event-ID`` belongs to a log that is gone, so it gets the new
log from the start instead of a silent gap.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from vibe_planner import ProgressEvent

__all__ = ["EventLog", "event_record"]

PLAN_ENDED = "plan_ended"
"""The kind of the service's own last event of a run (a run may fail before it has a plan)."""


def event_record(event: ProgressEvent) -> dict[str, Any]:
    """Return *event* as a JSON-ready dict with its ``kind``."""
    return {"kind": event.kind, **dataclasses.asdict(event)}


class EventLog:
    """The events of one plan, in the order they happened, and a way to wait for more."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.records: list[dict[str, Any]] = []
        self._changed = anyio.Event()
        self.open = False
        """Whether a run is going on (a stream waits for more events only then)."""

    @property
    def last_id(self) -> str | None:
        """The id of the newest event (``None`` before the first)."""
        return f"{self.epoch}-{len(self.records)}" if self.records else None

    def begin(self) -> None:
        """Mark a run as started: streams wait for its events."""
        self.open = True
        self._wake()

    def append(self, record: dict[str, Any]) -> None:
        """Add one event (stamped ``at``: Unix time, seconds) and wake the streams waiting for it."""
        self.records.append({"id": f"{self.epoch}-{len(self.records) + 1}", "at": time.time(), **record})
        self._wake()

    def end(self, record: dict[str, Any]) -> None:
        """Add the run's last event (``plan_ended``) and let the streams finish."""
        self.append({"kind": PLAN_ENDED, **record})
        self.open = False
        self._wake()

    def position(self, last_event_id: str | None) -> int:
        """Return how many events a client that last saw *last_event_id* has already seen.

        Raises:
            ValueError: The id is not of the form ``<epoch>-<n>``.

        """
        if last_event_id is None:
            return 0
        epoch, sep, number = last_event_id.strip().partition("-")
        if not sep or not number.isdigit() or len(number) > 12 or not epoch.isalnum():
            raise ValueError(f"Last-Event-ID must look like '<epoch>-<n>', got {last_event_id[:40]!r}")
        if epoch != self.epoch:
            return 0  # a log from before a restart: replay this one whole
        return min(int(number), len(self.records))

    async def follow(self, seen: int, heartbeat: float) -> AsyncIterator[dict[str, Any] | None]:
        """Yield the events after the first *seen*, then new ones until the run ends.

        Yields ``None`` when *heartbeat* seconds pass without an event (a keep-alive).
        """
        while True:
            while seen < len(self.records):
                seen += 1
                yield self.records[seen - 1]
            if not self.open:
                return
            changed = self._changed
            with anyio.move_on_after(heartbeat) as scope:
                await changed.wait()
            if scope.cancelled_caught:
                yield None

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
