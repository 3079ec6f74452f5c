"""`PostgresCheckpointStore`: checkpoints, journals and fenced leases in PostgreSQL.

For plans shared by many processes or machines (see docs/scaling.md). Needs the ``postgres``
extra (psycopg 3 and psycopg_pool).

Every call is one transaction on a pooled connection, made in one worker-thread hop
(`anyio.to_thread.run_sync`), in which the store also calls the ``encode``/``parse``
callables it is given. That is psycopg's synchronous API in a thread, not its asyncio one, on
purpose: it works under every backend anyio runs on (asyncio and trio), and a checkpoint
costs one hop whatever it holds, encoding included.

Leases expire: a lease lasts `lease_ttl` seconds unless renewed, by the database's clock.
Each grant draws a fencing token from one sequence, so tokens grow with every grant. Every
write locks the plan's lease row and goes through only if the row still holds the writer's
token: a holder that was paused or cut off past its lease, and replaced, gets
`StaleLeaseError` for everything it sends after. (An expired lease nobody took over is still
the current one: its holder's writes and renewals are accepted, which forks nothing.)

The address's password never leaves the store: `describe`, `repr` and errors name the store
as ``postgresql://user@host:port/database/schema``, and the database's messages are redacted.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.to_thread

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    PlanLockedError,
    StaleLeaseError,
    StoreUnavailableError,
    UnsafeCheckpointFolderError,
)
from .._ids import check_checkpoint_id, check_plan_id, checkpoint_sequence
from .._redact import Redactor
from ._postgres_schema import check_schema, migrate
from ._store import CheckpointStore, Latest, Lease, Stored, WriteBatch

__all__ = ["PostgresCheckpointStore"]

_T = TypeVar("_T")
_J = TypeVar("_J")
_R = TypeVar("_R")
_ITEM_ERRORS = (CheckpointCorruptError, UnsafeCheckpointFolderError)


class PostgresCheckpointStore(CheckpointStore):
    """Checkpoints in PostgreSQL tables; leases that expire, with fencing tokens.

    Args:
        url: A libpq address, ``postgresql://user:password@host:port/database``. A
            ``schema=NAME`` query parameter, if present, is taken out and used as *schema*.
        schema: The schema holding the tables (created, with them, on first use).
        lease_ttl: Seconds a lease lasts unless renewed (a run renews it every third of that).
        max_connections: Size of the connection pool.
        connect_timeout: Seconds to wait for a connection.

    Example:
        >>> store = PostgresCheckpointStore("postgresql://vibe:secret@db.internal/vibe", lease_ttl=30)

    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "vibe_planner",
        lease_ttl: float = 30.0,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            import psycopg_pool  # noqa: F401  (checked here, used when first connecting)
        except ImportError:
            raise ImportError("PostgresCheckpointStore needs the postgres extra: "
                              "pip install 'vibe-planner[postgres]'") from None
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be more than 0, got {lease_ttl}")
        self._conninfo, from_url = _split_schema(url)
        self.schema = check_schema(from_url or schema)
        self.lease_ttl = float(lease_ttl)
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self.where = f"{_public_address(self._conninfo)}/{self.schema}"
        """The store's address without its password: for messages."""
        self._redact = Redactor(_passwords(self._conninfo))
        self._pool: Any = None
        self._opening = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresCheckpointStore({self.where!r})"

    async def __aenter__(self) -> PostgresCheckpointStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (the store cannot be used afterwards)."""
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Close the connection pool, blocking (for code outside an event loop)."""
        with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def describe(self, plan_id: str, name: str | None = None) -> str:
        return f"{self.where}/{plan_id}" if name is None else f"{self.where}/{plan_id}/{name}"

    # -- reading -------------------------------------------------------------------------------
    async def plan_ids(self) -> list[str]:
        rows = await self.run(self._sql(
            "SELECT plan_id FROM {s}.vp_snapshots UNION SELECT plan_id FROM {s}.vp_journal_chunks"))
        return sorted(row[0] for row in rows)

    async def checkpoint_ids(self, plan_id: str) -> list[str]:
        check_plan_id(plan_id)
        rows = await self.run(self._sql("SELECT checkpoint_id FROM {s}.vp_snapshots WHERE plan_id = %s"),
                              [plan_id])
        return [row[0] for row in rows]

    async def find_plans(self, checkpoint_id: str) -> list[str]:
        rows = await self.run(self._sql(
            "SELECT DISTINCT plan_id FROM {s}.vp_snapshots WHERE checkpoint_id = %s"), [checkpoint_id])
        return sorted(row[0] for row in rows)

    async def read_checkpoint(self, plan_id: str, checkpoint_id: str, parse: Callable[[bytes], _T]) -> _T:
        check_plan_id(plan_id)
        check_checkpoint_id(checkpoint_id)
        query = self._sql("SELECT data FROM {s}.vp_snapshots WHERE plan_id = %s AND checkpoint_id = %s")

        def read(conn: Any) -> _T:
            row = conn.execute(query, [plan_id, checkpoint_id]).fetchone()
            if row is None:
                raise CheckpointNotFoundError(checkpoint_id, plan_id)
            return parse(bytes(row[0]))

        return await self.call(read)

    async def read_checkpoints(self, plan_id: str, parse: Callable[[str, bytes], _T]) -> list[Stored[_T]]:
        check_plan_id(plan_id)
        query = self._sql("SELECT checkpoint_id, data FROM {s}.vp_snapshots WHERE plan_id = %s")

        def read(conn: Any) -> list[Stored[_T]]:
            return [_parsed(name, bytes(data), parse) for name, data in conn.execute(query, [plan_id])]

        return await self.call(read)

    async def read_journals(self, plan_id: str, parse: Callable[[str, bytes], _J]) -> list[Stored[_J]]:
        check_plan_id(plan_id)
        return await self.call(functools.partial(self._journals, plan_id=plan_id, parse=parse))

    async def read_latest(
        self,
        plan_id: str,
        parse: Callable[[str, bytes], _T],
        parse_journal: Callable[[str, bytes], _J] | None = None,
    ) -> Latest[_T, _J] | None:
        check_plan_id(plan_id)
        query = self._sql("SELECT checkpoint_id, data FROM {s}.vp_snapshots WHERE plan_id = %s "
                          "ORDER BY sequence DESC LIMIT 1")

        def read(conn: Any) -> Latest[_T, _J] | None:
            row = conn.execute(query, [plan_id]).fetchone()
            if row is None:
                return None
            journals = [] if parse_journal is None else self._journals(conn, plan_id, parse_journal)
            return Latest(row[0], parse(row[0], bytes(row[1])), journals)

        # Repeatable read: the snapshot and the journals of one moment.
        return await self.call(read, isolation="REPEATABLE READ")

    def _journals(self, conn: Any, plan_id: str, parse: Callable[[str, bytes], _J]) -> list[Stored[_J]]:
        rows = conn.execute(self._sql(
            "SELECT run_id, string_agg(data, ''::bytea ORDER BY id) FROM {s}.vp_journal_chunks "
            "WHERE plan_id = %s GROUP BY run_id"), [plan_id]).fetchall()
        return [_parsed(run_id, bytes(data), parse) for run_id, data in sorted(rows)]

    # -- leases --------------------------------------------------------------------------------
    async def acquire_lease(self, plan_id: str) -> Lease:
        check_plan_id(plan_id)
        holder = f"pid={os.getpid()} host={socket.gethostname()}"
        grant = self._sql(
            "INSERT INTO {s}.vp_leases AS l (plan_id, token, holder, expires_at) "
            "VALUES (%s, nextval('{s}.vp_lease_tokens'), %s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (plan_id) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder, "
            "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= clock_timestamp() RETURNING token")
        current = self._sql("SELECT token, holder FROM {s}.vp_leases WHERE plan_id = %s")

        def acquire(conn: Any) -> Lease:
            row = conn.execute(grant, [plan_id, holder, self.lease_ttl]).fetchone()
            if row is not None:
                return Lease(plan_id, int(row[0]), holder, self.where)
            held = conn.execute(current, [plan_id]).fetchone()
            who = f"{held[1]} (lease {held[0]})" if held else "another process"
            raise PlanLockedError(plan_id, Path(self.describe(plan_id, ".lease")), who)

        return await self.call(acquire, plan_id=plan_id)

    async def renew_lease(self, lease: Lease) -> Lease:
        self._check_store(lease)
        renew = self._sql("UPDATE {s}.vp_leases SET expires_at = clock_timestamp() "
                          "+ make_interval(secs => %s) WHERE plan_id = %s AND token = %s RETURNING token")

        def extend(conn: Any) -> Lease:
            if conn.execute(renew, [self.lease_ttl, lease.plan_id, lease.token]).fetchone() is None:
                self._refuse(conn, lease)
            return lease

        return await self.call(extend, plan_id=lease.plan_id)

    async def release_lease(self, lease: Lease) -> None:
        if lease.handle != self.where:
            return
        await self.run(self._sql("DELETE FROM {s}.vp_leases WHERE plan_id = %s AND token = %s"),
                       [lease.plan_id, lease.token], plan_id=lease.plan_id)

    def _fence(self, conn: Any, lease: Lease) -> None:
        """Lock the plan's lease row; raise `StaleLeaseError` unless it holds *lease*'s token.

        The row lock orders this transaction against any grant or takeover of the plan.
        """
        row = conn.execute(self._sql("SELECT token FROM {s}.vp_leases WHERE plan_id = %s FOR UPDATE"),
                           [lease.plan_id]).fetchone()
        if row is None or int(row[0]) != lease.token:
            self._refuse(conn, lease)

    def _refuse(self, conn: Any, lease: Lease) -> None:
        held = conn.execute(self._sql("SELECT token, holder FROM {s}.vp_leases WHERE plan_id = %s"),
                            [lease.plan_id]).fetchone()
        raise StaleLeaseError(lease.plan_id, Path(self.describe(lease.plan_id, ".lease")), lease.token,
                              int(held[0]) if held else None, held[1] if held else None)

    def _check_store(self, lease: Lease) -> None:
        if lease.handle != self.where:
            check_plan_id(lease.plan_id)
            raise PlanLockedError(lease.plan_id, Path(self.describe(lease.plan_id, ".lease")),
                                  "nobody: this lease is not this store's")

    # -- writing -------------------------------------------------------------------------------
    async def commit(self, lease: Lease, batch: WriteBatch) -> None:
        self._check_store(lease)
        plan_id = lease.plan_id

        def apply(conn: Any, journal: bytes, snapshot: bytes) -> None:
            self._fence(conn, lease)
            if journal:
                conn.execute(self._sql(
                    "INSERT INTO {s}.vp_journal_chunks (plan_id, run_id, token, data) "
                    "VALUES (%s, %s, %s, %s)"),
                    [plan_id, batch.run_id, lease.token, journal])
            if batch.snapshot is not None:
                checkpoint_id = batch.snapshot.checkpoint_id
                inserted = conn.execute(self._sql(
                    "INSERT INTO {s}.vp_snapshots (plan_id, checkpoint_id, sequence, token, data) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"),
                    [plan_id, checkpoint_id, checkpoint_sequence(checkpoint_id), lease.token, snapshot])
                if inserted.rowcount != 1:
                    raise CheckpointWriteError(Path(self.describe(plan_id, checkpoint_id + ".json")),
                                               "a checkpoint with this name already exists")
            if batch.truncate_journal:
                conn.execute(self._sql(
                    "DELETE FROM {s}.vp_journal_chunks WHERE plan_id = %s AND run_id = %s"),
                    [plan_id, batch.run_id])
            self._delete(conn, plan_id, batch.delete_checkpoints, batch.delete_journals)

        def encode_then_apply() -> None:
            # Encoded before the transaction: an encoding error leaves everything as it was,
            # and the lease row is locked only for the writes themselves.
            journal = batch.journal() if callable(batch.journal) else batch.journal
            snapshot = batch.snapshot.encode() if batch.snapshot is not None else b""
            self._transaction(lambda conn: apply(conn, journal, snapshot), plan_id=plan_id, writing=True)

        await anyio.to_thread.run_sync(encode_then_apply)

    async def delete_checkpoint(self, plan_id: str, checkpoint_id: str) -> None:
        check_plan_id(plan_id)
        rows = await self.run(self._sql(
            "DELETE FROM {s}.vp_snapshots WHERE plan_id = %s AND checkpoint_id = %s RETURNING 1"),
            [plan_id, checkpoint_id], plan_id=plan_id, writing=True)
        if not rows:
            raise CheckpointNotFoundError(checkpoint_id, plan_id)

    async def prune(self, plan_id: str, checkpoint_ids: Sequence[str], run_ids: Sequence[str]) -> None:
        check_plan_id(plan_id)
        await self.call(lambda conn: self._delete(conn, plan_id, checkpoint_ids, run_ids),
                        plan_id=plan_id, writing=True)

    async def delete_plan(self, lease: Lease) -> None:
        self._check_store(lease)

        def delete(conn: Any) -> None:
            self._fence(conn, lease)
            for table in ("vp_snapshots", "vp_journal_chunks", "vp_queue"):
                conn.execute(self._sql(f"DELETE FROM {{s}}.{table} WHERE plan_id = %s"), [lease.plan_id])

        await self.call(delete, plan_id=lease.plan_id, writing=True)

    def _delete(self, conn: Any, plan_id: str, checkpoint_ids: Sequence[str], run_ids: Sequence[str]) -> None:
        if checkpoint_ids:
            conn.execute(self._sql(
                "DELETE FROM {s}.vp_snapshots WHERE plan_id = %s AND checkpoint_id = ANY(%s)"),
                [plan_id, list(checkpoint_ids)])
        if run_ids:
            conn.execute(self._sql(
                "DELETE FROM {s}.vp_journal_chunks WHERE plan_id = %s AND run_id = ANY(%s)"),
                [plan_id, list(run_ids)])

    # -- transactions (public for the workers' queue, which shares the pool) -------------------
    async def run(self, query: str, params: Sequence[Any] = (), **options: Any) -> list[tuple[Any, ...]]:
        """Run one statement in a transaction of its own; return its rows (if it has any)."""

        def execute(conn: Any) -> list[tuple[Any, ...]]:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []

        return await self.call(execute, **options)

    async def call(self, function: Callable[[Any], _R], **options: Any) -> _R:
        """Call ``function(connection)`` in one transaction, in a worker thread; return its result.

        Options: ``plan_id`` (for error messages), ``writing`` (a failure is then a
        `CheckpointWriteError`, else `StoreUnavailableError`), ``isolation`` (an SQL level).
        """
        return await anyio.to_thread.run_sync(functools.partial(self._transaction, function, **options))

    def _transaction(self, function: Callable[[Any], _R], *, plan_id: str | None = None,
                     writing: bool = False, isolation: str | None = None) -> _R:
        import psycopg

        try:
            with self._connection() as conn, conn.transaction():
                if isolation is not None:
                    conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                return function(conn)
        except psycopg.Error as exc:
            reason = self._redact(f"PostgreSQL: {type(exc).__name__}: {exc}".strip())
            if writing:
                raise CheckpointWriteError(Path(self.describe(plan_id or "")), reason) from None
            raise StoreUnavailableError(self.where, reason) from None

    def _connection(self) -> Any:
        with self._opening:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._pool is None:
                self._pool = self._open_pool()
        return self._pool.connection(timeout=self._connect_timeout)

    def _open_pool(self) -> Any:
        import psycopg
        import psycopg_pool

        # One plain connection first: it migrates the schema, and a wrong address or password
        # fails here at once with the server's own words (a pool would only time out).
        with psycopg.connect(self._conninfo, connect_timeout=max(1, int(self._connect_timeout)),
                             application_name="vibe_planner") as conn:
            migrate(conn, self.schema)
        pool = psycopg_pool.ConnectionPool(
            self._conninfo, min_size=1, max_size=self._max_connections, open=False,
            kwargs={"application_name": "vibe_planner"}, name=f"vibe_planner {self.where}",
            timeout=self._connect_timeout)
        pool.open(wait=True, timeout=self._connect_timeout)
        return pool

    def _sql(self, query: str) -> str:
        return query.replace("{s}", self.schema)


def _parsed(key: str, data: bytes, parse: Callable[[str, bytes], _T]) -> Stored[_T]:
    try:
        return Stored(key, len(data), parse(key, data))
    except _ITEM_ERRORS as exc:
        return Stored(key, len(data), None, exc)


def _split_schema(url: str) -> tuple[str, str | None]:
    """Take a ``schema=`` query parameter out of a URL (libpq does not know it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"a PostgreSQL store needs a postgresql:// address, got one starting "
                         f"with {parts.scheme + ':' if parts.scheme else 'no scheme'}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in query if key == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _public_address(conninfo: str) -> str:
    parts = urlsplit(conninfo)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}".rstrip("/")


def _passwords(conninfo: str) -> list[str]:
    found = [urlsplit(conninfo).password, os.environ.get("PGPASSWORD")]
    try:
        from psycopg.conninfo import conninfo_to_dict

        found.append(str(conninfo_to_dict(conninfo).get("password") or ""))
    except Exception:  # best effort: the URL's own password is already listed
        pass
    return [p for p in found if p]
