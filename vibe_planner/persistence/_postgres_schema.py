"""The tables of `PostgresCheckpointStore`, and the migrations that create them.

The store creates its own schema: `migrate` brings a database from whatever version it is at
to `VERSION`, one transaction per step, under a transaction-level advisory lock keyed on the
schema name, so that many workers starting at once migrate it once (the others wait for the
lock, then see the new version and do nothing). A step that would need ``CREATE INDEX
CONCURRENTLY`` (adding an index to a big live table) cannot run inside a transaction; such a
step must be a separate autocommit statement after its version's transaction, never inside it.

Tables (``{s}`` is the schema):

- ``{s}.vp_schema``: one row, the version.
- ``{s}.vp_leases``: the current lease of each plan being run: its fencing token (from the
  sequence ``{s}.vp_lease_tokens``, so tokens grow with every grant, across all plans), its
  holder and when it expires (by the database's clock, so workers' clocks do not matter).
- ``{s}.vp_snapshots``: checkpoint documents, by plan and checkpoint id, with their sequence
  and the token of the lease that wrote them.
- ``{s}.vp_journal_chunks``: journals as appended chunks (an append is one insert, never a
  rewrite), with the writer's token; a journal is its chunks in id order.
- ``{s}.vp_queue``: plans submitted to workers (see `vibe_planner.workers`).
"""

from __future__ import annotations

import re
from typing import Any

from .._exceptions import InvalidIdentifierError

__all__ = ["SCHEMA_NAME", "VERSION", "check_schema", "migrate"]

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_V1 = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.vp_schema (version integer NOT NULL);
INSERT INTO {s}.vp_schema VALUES (0);
CREATE SEQUENCE {s}.vp_lease_tokens;
CREATE TABLE {s}.vp_leases (
    plan_id text PRIMARY KEY,
    token bigint NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE {s}.vp_snapshots (
    plan_id text NOT NULL,
    checkpoint_id text NOT NULL,
    sequence bigint NOT NULL,
    token bigint NOT NULL,
    data bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (plan_id, checkpoint_id)
);
CREATE INDEX vp_snapshots_latest ON {s}.vp_snapshots (plan_id, sequence DESC);
CREATE INDEX vp_snapshots_by_id ON {s}.vp_snapshots (checkpoint_id);
CREATE TABLE {s}.vp_journal_chunks (
    id bigserial PRIMARY KEY,
    plan_id text NOT NULL,
    run_id text NOT NULL,
    token bigint NOT NULL,
    data bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX vp_journal_chunks_run ON {s}.vp_journal_chunks (plan_id, run_id, id);
CREATE TABLE {s}.vp_queue (
    plan_id text PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'waiting',
                                         'cancelled')),
    vibe bytea NOT NULL,
    metadata bytea NOT NULL,
    submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_by text,
    claimed_until timestamptz,
    claims integer NOT NULL DEFAULT 0,
    finished_at timestamptz,
    error text
);
CREATE INDEX vp_queue_ready ON {s}.vp_queue (submitted_at) WHERE state IN ('queued', 'running');
"""

_MIGRATIONS: list[tuple[int, str]] = [(1, _V1)]
VERSION = _MIGRATIONS[-1][0]
"""The schema version this code reads and writes."""


def check_schema(name: str) -> str:
    """Return *name* if it is a plain lower-case SQL identifier (it is spliced into SQL)."""
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise InvalidIdentifierError("schema", name, f"must match {SCHEMA_NAME.pattern}")
    return name


def migrate(conn: Any, schema: str) -> int:
    """Bring *schema* to `VERSION` on a psycopg connection (worker thread); return the old version.

    Raises `RuntimeError` if the database holds a newer version than this code knows.
    """
    found = _version(conn, schema)
    if found == VERSION:
        return found  # the common case: no lock taken
    for version, script in _MIGRATIONS:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["vibe_planner:" + schema])
            current = _version(conn, schema)
            if current >= version:
                continue
            for statement in script.format(s=schema).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"UPDATE {schema}.vp_schema SET version = %s", [version])
    current = _version(conn, schema)
    if current > VERSION:
        raise RuntimeError(f"schema {schema!r} is at version {current}; this vibe_planner knows "
                           f"up to {VERSION}: upgrade vibe_planner")
    return found


def _version(conn: Any, schema: str) -> int:
    with conn.transaction():
        # A plain query of pg_class, not to_regclass: the catalog cache may not have seen a
        # table created by the migration this one waited for (an advisory lock does not
        # process invalidations); the query's own snapshot does.
        row = conn.execute("SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                           "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'vp_schema'",
                           [schema]).fetchone()
        if row is None:
            return 0
        version = conn.execute(f"SELECT version FROM {schema}.vp_schema").fetchone()
    return int(version[0]) if version else 0
