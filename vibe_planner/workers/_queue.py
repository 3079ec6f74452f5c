"""`PlanQueue`: plans submitted to workers, in the ``vp_queue`` table of a PostgreSQL store.

A submitted plan is a row: its plan id, vibe and metadata, and a state: ``queued`` until a
worker claims it, ``running`` while one does, then ``completed``, ``failed``, ``waiting`` or
``cancelled`` (what the run ended as). Workers claim rows with ``FOR UPDATE SKIP LOCKED``, so
many workers polling at once each get a different plan and never wait on each other; a
submission (and a plan handed back) sends a ``NOTIFY`` on the schema's channel, which wakes
idle workers at once.

A ``running`` row is taken over when its worker is gone: when the plan's lease has expired
(nobody renewed it) and the claim itself (``claimed_until``, which covers the moment between
claiming and taking the lease) has lapsed. The run lease, not the row, is what keeps two
workers apart: a worker that claims a plan whose lease someone else holds just lets it go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .._models import Vibe
from ..persistence._postgres_store import PostgresCheckpointStore
from ..persistence._store import CheckpointStore

__all__ = ["Claim", "PlanQueue", "QueueState"]

QueueState = str
"""``queued``, ``running``, ``completed``, ``failed``, ``waiting`` or ``cancelled``."""
_FINAL = ("completed", "failed", "waiting", "cancelled")


@dataclass(frozen=True, slots=True)
class Claim:
    """A plan a worker claimed: what to run, and how many times it was claimed (this one too)."""

    plan_id: str
    vibe: Vibe
    metadata: dict[str, Any]
    claims: int


class PlanQueue:
    """The work queue of one PostgreSQL store (its schema)."""

    def __init__(self, store: PostgresCheckpointStore) -> None:
        self.store = store
        self.channel = f"vibe_planner_{store.schema}"
        """The ``LISTEN``/``NOTIFY`` channel of this queue."""

    @classmethod
    def of(cls, store: CheckpointStore) -> PlanQueue:
        """Return the queue of *store*; `TypeError` if it is not a PostgreSQL store."""
        if not isinstance(store, PostgresCheckpointStore):
            raise TypeError(f"queueing plans for workers needs a PostgresCheckpointStore; this "
                            f"planner's store is {store!r} (see docs/scaling.md)")
        return cls(store)

    def _sql(self, query: str) -> str:
        return query.replace("{s}", self.store.schema)

    async def submit(self, plan_id: str, vibe: Vibe, metadata: dict[str, Any]) -> QueueState:
        """Queue a plan (again, if it had ended); return its state now.

        A plan already queued or running is left as it is (``queued``/``running`` returned).
        """
        upsert = self._sql(
            "INSERT INTO {s}.vp_queue AS q (plan_id, state, vibe, metadata) VALUES (%s, 'queued', %s, %s) "
            "ON CONFLICT (plan_id) DO UPDATE SET state = 'queued', vibe = EXCLUDED.vibe, "
            "metadata = EXCLUDED.metadata, submitted_at = clock_timestamp(), claimed_by = NULL, "
            "claimed_until = NULL, claims = 0, finished_at = NULL, error = NULL "
            "WHERE q.state NOT IN ('queued', 'running') RETURNING state")
        current = self._sql("SELECT state FROM {s}.vp_queue WHERE plan_id = %s")
        row = [plan_id, vibe.model_dump_json().encode(), orjson.dumps(metadata)]

        def submit(conn: Any) -> str:
            inserted = conn.execute(upsert, row).fetchone()
            if inserted is None:
                return str(conn.execute(current, [plan_id]).fetchone()[0])
            conn.execute("SELECT pg_notify(%s, %s)", [self.channel, plan_id])
            return "queued"

        return await self.store.call(submit, plan_id=plan_id, writing=True)

    async def claim(self, worker: str, hold: float) -> Claim | None:
        """Claim the oldest plan that is queued, or running without a live lease; ``None`` if none.

        The claim keeps other workers off the plan for *hold* seconds, time enough to take its lease.
        """
        claim = self._sql(
            "WITH next AS (SELECT q.plan_id FROM {s}.vp_queue q "
            "  WHERE q.state IN ('queued', 'running') "
            "  AND (q.claimed_until IS NULL OR q.claimed_until < clock_timestamp()) "
            "  AND NOT EXISTS (SELECT 1 FROM {s}.vp_leases l "
            "                  WHERE l.plan_id = q.plan_id AND l.expires_at > clock_timestamp()) "
            "  ORDER BY q.submitted_at LIMIT 1 FOR UPDATE OF q SKIP LOCKED) "
            "UPDATE {s}.vp_queue q SET state = 'running', claimed_by = %s, claims = q.claims + 1, "
            "claimed_until = clock_timestamp() + make_interval(secs => %s) "
            "FROM next WHERE q.plan_id = next.plan_id RETURNING q.plan_id, q.vibe, q.metadata, q.claims")
        rows = await self.store.run(claim, [worker, hold], writing=True)
        if not rows:
            return None
        plan_id, vibe, metadata, claims = rows[0]
        return Claim(plan_id, Vibe.model_validate_json(bytes(vibe)), orjson.loads(bytes(metadata)), claims)

    async def finish(self, plan_id: str, worker: str, state: QueueState, error: str | None = None) -> None:
        """Record how a claimed plan's run ended (if *worker* still has the claim)."""
        if state not in _FINAL:
            raise ValueError(f"not a final state: {state!r}")
        await self.store.run(self._sql(
            "UPDATE {s}.vp_queue SET state = %s, error = %s, finished_at = clock_timestamp(), "
            "claimed_until = NULL WHERE plan_id = %s AND claimed_by = %s AND state = 'running'"),
            [state, error, plan_id, worker], plan_id=plan_id, writing=True)

    async def hand_back(self, plan_id: str, worker: str) -> None:
        """Put a claimed plan back in the queue at once (its worker is stopping) and wake a worker."""

        def hand_back(conn: Any) -> None:
            conn.execute(self._sql(
                "UPDATE {s}.vp_queue SET state = 'queued', claimed_by = NULL, claimed_until = NULL "
                "WHERE plan_id = %s AND claimed_by = %s AND state = 'running'"), [plan_id, worker])
            conn.execute("SELECT pg_notify(%s, %s)", [self.channel, plan_id])

        await self.store.call(hand_back, plan_id=plan_id, writing=True)

    async def states(self) -> dict[str, QueueState]:
        """Return every queued plan's state, by plan id."""
        rows = await self.store.run(self._sql("SELECT plan_id, state FROM {s}.vp_queue"))
        return {plan_id: state for plan_id, state in rows}

    async def claimable(self) -> int:
        """Return how many plans are queued, or running without a live lease."""
        rows = await self.store.run(self._sql(
            "SELECT count(*) FROM {s}.vp_queue q WHERE q.state IN ('queued', 'running') "
            "AND NOT EXISTS (SELECT 1 FROM {s}.vp_leases l "
            "                WHERE l.plan_id = q.plan_id AND l.expires_at > clock_timestamp())"))
        return int(rows[0][0])

    async def unfinished(self) -> int:
        """Return how many plans are queued or running."""
        rows = await self.store.run(self._sql(
            "SELECT count(*) FROM {s}.vp_queue WHERE state IN ('queued', 'running')"))
        return int(rows[0][0])
