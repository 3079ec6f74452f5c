"""`RunRecorder`: the one background writer that makes a run durable.

The scheduler reports each finished node with a cheap, synchronous call. The recorder's loop
(a task in the run's task group) gathers what piled up since its last write and hands it to
the manager as one batch, which the store applies in one thread hop (or one transaction): the
journal records first (one append, one fsync for all of them), then at most one snapshot
(encoded in that hop, off the loop), then the journal's truncation and retention. Snapshot
requests coalesce: if several pile up while the thread is busy, one snapshot of the newest
state is written, under the most important reason asked for.

Invariant: a snapshot's state is captured on the event loop right after the batch's journal
records are taken, so it contains every record written to the journal so far. A run's first
snapshot is a base (the whole state); the next ones are deltas (what changed since the last
snapshot; with the journal on, they point at the journal records instead of repeating them),
until the deltas since the base have grown to ``base_ratio`` times the base (`ChainWriter`). So
the journal is never emptied: deltas point into it.

Lifecycle: ``async with open_recorder(...) as recorder`` starts the writer and, on the way out,
lets it write what is queued and waits for it (a cancelled run still gets its last snapshot).
The writer never raises: a failed write is kept as `RunRecorder.failure`, cancels the scopes
opened with `RunRecorder.cancelled_on_failure` and is raised to whoever waits for a write.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

import anyio
import anyio.lowlevel

from .. import _telemetry as telemetry
from .._models import CheckpointReason
from .._state import Capture, Record, RunState
from ._chain import ChainWriter, Parent, delta_fields
from ._codec import checkpoint_fields, checksum_of, encode_checkpoint
from ._manager import WorkflowPersistenceManager

__all__ = ["Durability", "RunRecorder", "open_recorder"]

Durability = Literal["journal", "interval", "none"]
"""How much a crash may lose.

- ``journal`` (default): nothing that completed: each completion is appended to the plan's
  journal (concurrent completions share one fsync) besides the snapshots.
- ``interval``: up to ``checkpoint_interval - 1`` completed nodes (snapshots only).
- ``none``: everything; no files are written (useful for tests and benchmarks).
"""

_PRIORITY: dict[str, int] = {
    "interval": 0, "manual": 1, "planned": 2, "resumed": 2, "answered": 2, "failure": 3, "final": 4,
    "waiting": 4, "cancelled": 5,
}


class RunRecorder:
    """Writes the journal and snapshots of one run, off the event loop."""

    def __init__(
        self,
        manager: WorkflowPersistenceManager | None,
        state: RunState,
        *,
        durability: Durability,
        interval: int | None,
        on_checkpoint: Callable[[str, str], None] | None = None,
        resumed_from: str | None = None,
    ) -> None:
        self._manager = manager
        self._state = state
        self.enabled = manager is not None and durability != "none"
        self._journal_on = self.enabled and durability == "journal"
        self._interval = interval
        self._on_checkpoint = on_checkpoint
        # Until this run's first snapshot is durable, the latest checkpoint is the one it
        # resumed from, which names another run: the journal then starts with a header naming
        # that checkpoint, so that a resume after a crash in that window still finds it.
        self._header: str | None = resumed_from
        self._records: list[Record] = []
        self._finished_since_snapshot = 0
        self._reason: str | None = None
        self._requested = 0
        self._written = 0
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._closing = False
        self._ended = False
        self.failure: BaseException | None = None
        """Why the writer stopped, if a write failed."""
        self._failure_scopes: list[anyio.CancelScope] = []
        self.written: list[str] = []
        """Ids of the checkpoints written, oldest first."""
        self._chain = ChainWriter(manager.base_ratio if manager is not None else 0)

    # -- called by the scheduler, on the event loop ------------------------------------------
    def node_finished(self, record: Record) -> None:
        """Note a node that completed or failed; journal it and snapshot every N of them."""
        if not self.enabled:
            return
        if self._journal_on and record["status"] == "completed":
            self._records.append(record)
            self._wake.set()
        self._finished_since_snapshot += 1
        if self._interval and self._finished_since_snapshot >= self._interval:
            self.request("interval")

    def request(self, reason: CheckpointReason) -> int:
        """Ask for a snapshot without waiting; return the request's generation."""
        if not self.enabled:
            return self._requested  # nothing is written (durability "none")
        if self._reason is None or _PRIORITY[reason] >= _PRIORITY[self._reason]:
            self._reason = reason
        self._finished_since_snapshot = 0
        self._requested += 1
        self._wake.set()
        return self._requested

    async def checkpoint(self, reason: CheckpointReason) -> str | None:
        """Write a snapshot of the current state and wait until it is durable; return its id."""
        if not self.enabled:
            return None
        if self.failure is not None:
            raise self.failure
        if self._ended:
            raise RuntimeError("the checkpoint writer of this run has already ended")
        generation = self.request(reason)
        while self._written < generation:
            if self.failure is not None:
                raise self.failure
            if self._ended:
                # The writer was stopped from outside (a native cancel of every task, as
                # asyncio does when a handler's KeyboardInterrupt stops the loop).
                raise RuntimeError("the checkpoint writer of this run ended before writing")
            await self._progress.wait()
        return self.written[-1]

    @contextlib.contextmanager
    def cancelled_on_failure(self) -> Iterator[None]:
        """Run the block in a scope that a failed write cancels (`failure` then says why)."""
        with anyio.CancelScope() as scope:
            self._failure_scopes.append(scope)
            try:
                yield
            finally:
                self._failure_scopes.remove(scope)

    def raise_failure(self) -> None:
        """Raise the writer's failure, if a write failed."""
        if self.failure is not None:
            raise self.failure

    def _close(self) -> None:
        """Let the writer finish what is queued and end."""
        self._closing = True
        self._wake.set()

    # -- the writer loop ----------------------------------------------------------------------
    async def _write_until_closed(self) -> None:
        """Write batches until closed. Shielded: a cancelled run still gets its last writes."""
        try:
            with anyio.CancelScope(shield=True):
                await self._write_loop()
        finally:
            # However it ends (a native cancel gets through the shield), nobody may go on
            # waiting for a write that will never come.
            self._ended = True
            self._notify()

    async def _write_loop(self) -> None:
        # One turn of the loop first: nodes ready at the start (a resume's, say) complete
        # their first streak, and their records share the first batch's fsync.
        await anyio.lowlevel.checkpoint()
        while True:
            # A fresh event before looking at the state: every change to the state sets
            # the event after it is made, so no wake-up can fall between the look and
            # the wait (`close` included: it is looked at on every pass, not only when a
            # wake-up finds no work).
            self._wake = anyio.Event()
            if self.failure is not None:
                return
            if self._records or self._reason is not None:
                await self._write_batch()
            elif self._closing:
                return
            else:
                await self._wake.wait()

    async def _write_batch(self) -> None:
        records, self._records = self._records, []
        reason, self._reason = self._reason, None
        target = self._requested
        capture = None
        if reason is not None:
            chain = self._chain
            capture = self._state.capture() if chain.wants_base() else self._state.capture_changes(chain.mark)
        try:
            checkpoint_id = await self._commit(records, capture, reason)
        except Exception as exc:
            self.failure = exc
            for scope in self._failure_scopes:
                scope.cancel()
            self._notify()
            return
        if checkpoint_id is not None and reason is not None:
            self.written.append(checkpoint_id)
            self._written = target
            if self._on_checkpoint is not None:
                self._on_checkpoint(checkpoint_id, reason)
        self._notify()

    def _notify(self) -> None:
        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    async def _commit(self, records: list[Record], capture: Capture | None, reason: str | None) -> str | None:
        """Append the journal, then write the snapshot (a base or a delta): one batch, one hop."""
        assert self._manager is not None
        state, chain = self._state, self._chain
        journaled = [record["node_id"] for record in records]
        made: dict[str, int | str] = {}
        encode = None
        if capture is not None and reason is not None:
            parent = None if capture.full else chain.parent
            journal = chain.journal_ref(journaled) if parent is not None else None
            encode = _encoder(state, capture, reason, parent, journal, made)

        with telemetry.checkpoint_span(reason, len(records)) as span:
            started = time.monotonic()
            checkpoint_id = await self._manager.write(
                state.plan.plan_id, state.run_id, records, resumed_from=self._header if records else None,
                snapshot=encode, base=None if capture is None or capture.full or chain.parent is None
                else chain.parent.base,
                # Only when every snapshot is a base (base_ratio 0) does none point into the
                # journal: then, as in version 1, a durable snapshot empties it.
                truncate_journal=self._journal_on and chain.ratio <= 0,
            )
            telemetry.checkpoint_written(span, checkpoint_id, int(made.get("size", 0)),
                                         time.monotonic() - started)
        if records or checkpoint_id is not None:
            self._header = None  # written, or the journal is this snapshot's from now on
        chain.journal_written(journaled)
        if checkpoint_id is not None and capture is not None:
            chain.snapshot_written(checkpoint_id, full=capture.full, size=int(made["size"]),
                                   checksum=str(made["checksum"]), mark=capture.mark)
        return checkpoint_id


def _encoder(
    state: RunState, capture: Capture, reason: str, parent: Parent | None,
    journal: dict[str, object] | None, made: dict[str, int | str],
) -> Callable[[str, int], bytes]:
    """Return the function making a snapshot's bytes off the loop (a base if no *parent*)."""

    def encode(checkpoint_id: str, sequence: int) -> bytes:  # called off the loop
        if parent is None:
            fields = checkpoint_fields(state, capture, checkpoint_id=checkpoint_id, sequence=sequence,
                                       reason=reason)
        else:
            fields = delta_fields(capture, plan_id=state.plan.plan_id, run_id=state.run_id,
                                  total=len(state.plan.nodes), parent=parent, journal=journal,
                                  checkpoint_id=checkpoint_id, sequence=sequence, reason=reason)
        data = encode_checkpoint(fields)
        made["size"], made["checksum"] = len(data), checksum_of(data)
        return data

    return encode


@contextlib.asynccontextmanager
async def open_recorder(
    manager: WorkflowPersistenceManager | None,
    state: RunState,
    *,
    durability: Durability,
    interval: int | None,
    on_checkpoint: Callable[[str, str], None] | None = None,
    resumed_from: str | None = None,
) -> AsyncIterator[RunRecorder]:
    """Start a run's writer; on the way out, let it write what is queued and wait for it."""
    recorder = RunRecorder(manager, state, durability=durability, interval=interval,
                           on_checkpoint=on_checkpoint, resumed_from=resumed_from)
    if not recorder.enabled:
        yield recorder
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder._write_until_closed, name="vibe_planner checkpoint writer")
        try:
            yield recorder
        finally:
            recorder._close()
