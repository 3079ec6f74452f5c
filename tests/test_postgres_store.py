"""What the PostgreSQL store adds to the store contract: expiring fenced leases, its schema,
its address (and the password that must never show), on the suite's own server (tests/pg.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from tests import pg
from tests.helpers import StaticPlanner, node
from vibe_planner import (
    CheckpointWritten,
    FileCheckpointStore,
    MemoryCheckpointStore,
    MetaPlanner,
    NodeContext,
    PlanLockedError,
    PostgresCheckpointStore,
    ProgressEvent,
    StaleLeaseError,
    StoreUnavailableError,
    WorkflowPersistenceManager,
    WriteBatch,
    store_from_url,
)
from vibe_planner.persistence._postgres_schema import VERSION

pytestmark = pytest.mark.anyio

CP1, CP2 = "cp-00000001-0123456789ab", "cp-00000002-0123456789ab"


def sql(store: PostgresCheckpointStore, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.server().url, autocommit=True) as conn:
        cursor = conn.execute(query.replace("{s}", store.schema), params)
        return cursor.fetchall() if cursor.description else []


def expire(store: PostgresCheckpointStore, plan_id: str) -> None:
    """Make a plan's lease look unrenewed past its time (what a paused holder's lease does)."""
    sql(store, "UPDATE {s}.vp_leases SET expires_at = clock_timestamp() - interval '1 second' "
               "WHERE plan_id = %s", plan_id)


async def test_an_expired_lease_is_taken_over_and_its_holder_fenced_off() -> None:
    store = pg.pg_store(lease_ttl=30)
    old = await store.acquire_lease("p")
    await store.write_snapshot(old, CP1, b"one")
    with pytest.raises(PlanLockedError, match="lease"):
        await store.acquire_lease("p")
    expire(store, "p")
    new = await store.acquire_lease("p")
    assert new.token > old.token
    for late in (store.write_snapshot(old, CP2, b"late"), store.append_journal(old, "r", b"late\n"),
                 store.renew_lease(old), store.delete_plan(old)):
        with pytest.raises(StaleLeaseError) as info:
            await late
        assert (info.value.token, info.value.current) == (old.token, new.token)
        assert info.value.plan_id == "p" and "pid=" in str(info.value.holder)
    assert await store.checkpoint_ids("p") == [CP1]
    await store.release_lease(old)  # releasing a superseded lease leaves the new one alone
    await store.write_snapshot(new, CP2, b"two")
    assert [row[0] for row in sql(store, "SELECT token FROM {s}.vp_snapshots ORDER BY sequence")] \
        == [old.token, new.token]


async def test_an_expired_lease_nobody_took_over_is_still_its_holders() -> None:
    store = pg.pg_store(lease_ttl=30)
    lease = await store.acquire_lease("p")
    expire(store, "p")
    assert await store.renew_lease(lease) is lease
    await store.write_snapshot(lease, CP1, b"s")
    with pytest.raises(PlanLockedError):  # renewed: not takeable any more
        await store.acquire_lease("p")


async def test_tokens_grow_across_store_objects_and_plans() -> None:
    first = pg.pg_store()
    second = PostgresCheckpointStore(pg.server().url, schema=first.schema)
    pg.server().stores.append(second)
    tokens = []
    for store, plan in [(first, "a"), (second, "b"), (first, "b"), (second, "a")]:
        lease = await store.acquire_lease(plan)
        tokens.append(lease.token)
        await store.release_lease(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    lease = await first.acquire_lease("a")
    with pytest.raises(PlanLockedError):  # the other object sees the same lease
        await second.acquire_lease("a")
    await second.commit(lease, WriteBatch("r", journal=b"x\n"))  # same database, same schema: valid
    elsewhere = pg.pg_store()
    with pytest.raises(PlanLockedError):
        await elsewhere.commit(lease, WriteBatch("r", journal=b"x\n"))


async def test_the_schema_is_created_once_by_many_stores_at_once() -> None:
    schema = pg.fresh_schema()
    stores = [PostgresCheckpointStore(pg.server().url, schema=schema) for _ in range(6)]
    pg.server().stores.extend(stores)
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.plan_ids)
    assert sql(stores[0], "SELECT version FROM {s}.vp_schema") == [(VERSION,)]


async def test_a_schema_newer_than_this_code_is_a_clear_error() -> None:
    store = pg.pg_store()
    await store.plan_ids()
    sql(store, "UPDATE {s}.vp_schema SET version = 99")
    newer = PostgresCheckpointStore(pg.server().url, schema=store.schema)
    pg.server().stores.append(newer)
    with pytest.raises(RuntimeError, match=r"version 99.*upgrade vibe_planner"):
        await newer.plan_ids()


async def echo(ctx: NodeContext) -> str:
    return ctx.node.id


async def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    server = pg.server()
    caplog.set_level(logging.DEBUG)
    store = pg.pg_store()
    assert server.password not in repr(store) + store.describe("p", CP1 + ".json")
    assert store.describe("p") == f"postgresql://vibe@127.0.0.1:{server.port}/vibe/{store.schema}/p"
    manager = WorkflowPersistenceManager(store=store)
    assert server.password not in repr(manager)
    planner = MetaPlanner(planner=StaticPlanner([node("a"), node("b", "a")]), persistence_manager=manager,
                          handlers={"work": echo})
    result = await planner.execute_with_resume("secret keeping")
    assert result.status == "completed"
    stored = sql(store, "SELECT data FROM {s}.vp_snapshots UNION ALL SELECT data FROM {s}.vp_journal_chunks")
    assert stored and all(server.password.encode() not in bytes(row[0]) for row in stored)
    wrong = server.url.replace(server.password, server.password[::-1])
    bad = PostgresCheckpointStore(wrong, schema=store.schema, connect_timeout=5)
    pg.server().stores.append(bad)
    with pytest.raises(StoreUnavailableError) as info:
        await bad.plan_ids()
    assert "password authentication failed" in str(info.value)
    for text in (str(info.value), repr(info.value.__cause__), caplog.text):
        assert server.password not in text and server.password[::-1] not in text


async def test_a_run_renews_its_lease_while_it_runs() -> None:
    store = pg.pg_store(lease_ttl=0.6)
    seen: set[Any] = set()

    async def wait_for_renewals(ctx: NodeContext) -> str:
        while len(seen) < 4:  # the lease's expiry moved three times: renewed
            seen.update(row[0] for row in sql(store, "SELECT expires_at FROM {s}.vp_leases"))
            await anyio.sleep(0.05)
        with pytest.raises(PlanLockedError):
            await store.acquire_lease(ctx.plan_id)
        return "ok"

    planner = MetaPlanner(planner=StaticPlanner([node("slow")]), handlers={"work": wait_for_renewals},
                          persistence_manager=WorkflowPersistenceManager(store=store))
    result = await planner.execute_with_resume("renewals")
    assert result.status == "completed"
    assert sql(store, "SELECT count(*) FROM {s}.vp_leases") == [(0,)]  # released at the end


async def test_a_run_whose_lease_was_taken_over_stops_and_writes_nothing_more() -> None:
    store = pg.pg_store(lease_ttl=30)
    taken, a_saved = anyio.Event(), anyio.Event()
    calls: list[str] = []

    def saved(event: ProgressEvent) -> None:
        if isinstance(event, CheckpointWritten) and event.completed == 1:
            a_saved.set()

    async def work(ctx: NodeContext) -> str:
        calls.append(ctx.node.id)
        if ctx.node.id == "b":
            await a_saved.wait()  # a's snapshot is durable first
            expire(store, ctx.plan_id)  # as if this process had been paused past its lease
            thief = await store.acquire_lease(ctx.plan_id)
            taken.set()
            assert thief.token
        return ctx.node.id

    async def recorded(plan_id: str) -> set[str]:
        restored = await WorkflowPersistenceManager(store=store).restore(plan_id)
        if restored is None:
            return set()
        return set(restored.checkpoint.completed_nodes) | {r["node_id"] for r in restored.journal_records}

    nodes = [node("a"), node("b", "a"), node("c", "b")]
    planner = MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": work}, checkpoint_interval=1,
                          persistence_manager=WorkflowPersistenceManager(store=store),
                          progress_callback=saved)
    with pytest.raises(StaleLeaseError) as info:
        await planner.execute_with_resume("taken over")
    assert taken.is_set() and calls[:2] == ["a", "b"]
    plan_id = info.value.plan_id
    assert await recorded(plan_id) == {"a"}  # b finished after the takeover: its record was refused
    (current,), = sql(store, "SELECT token FROM {s}.vp_leases WHERE plan_id = %s", plan_id)
    assert info.value.current == current
    written = sql(store, "SELECT token FROM {s}.vp_snapshots UNION ALL "
                         "SELECT token FROM {s}.vp_journal_chunks")
    assert written and all(token == info.value.token for (token,) in written)  # none by the thief...
    assert current > info.value.token  # ...and none by the old holder after the takeover


@pytest.mark.parametrize(("url", "kind"), [
    pytest.param("some/folder", FileCheckpointStore, id="path"),
    pytest.param("file:some/folder", FileCheckpointStore, id="file"),
    pytest.param("memory:", MemoryCheckpointStore, id="memory"),
])
def test_store_from_url_names_every_store(url: str, kind: type, tmp_path: Path) -> None:
    store = store_from_url(url)
    assert type(store) is kind
    if isinstance(store, FileCheckpointStore):
        assert store.root == Path("some/folder")


def test_store_from_url_makes_a_postgres_store_with_its_schema() -> None:
    store = store_from_url("postgresql://u:pw-123456@db.example:6543/vibe?schema=tenant_a&sslmode=disable",
                           lease_ttl=5)
    assert isinstance(store, PostgresCheckpointStore)
    assert store.schema == "tenant_a" and store.lease_ttl == 5
    assert store.where == "postgresql://u@db.example:6543/vibe/tenant_a"
    with pytest.raises(ValueError, match="unknown store address scheme 'redis'"):
        store_from_url("redis://localhost/0")
    with pytest.raises(ValueError, match="schema"):
        store_from_url("postgresql://u@h/db?schema=Robert');DROP")
