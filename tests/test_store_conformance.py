"""The `CheckpointStore` contract, written once and run against every store.

Add a store to `STORES` and it must pass every test above the "file store only" line
unchanged: those tests use the protocol alone, never the files (or rows) behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import StaticPlanner, node
from tests.pg import pg_store
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CheckpointStore,
    CheckpointWriteError,
    FileCheckpointStore,
    Lease,
    MemoryCheckpointStore,
    MetaPlanner,
    NodeContext,
    PlanLockedError,
    SnapshotWrite,
    WorkflowPersistenceManager,
    WriteBatch,
)

pytestmark = pytest.mark.anyio

STORES: dict[str, Callable[[Path], CheckpointStore]] = {
    "file": lambda tmp_path: FileCheckpointStore(tmp_path / "cp"),
    "memory": lambda tmp_path: MemoryCheckpointStore(),
    "postgres": lambda tmp_path: pg_store(),
}

CP1, CP2, CP3 = "cp-00000001-0123456789ab", "cp-00000002-0123456789ab", "cp-00000003-0123456789ab"
CP10 = "cp-00000010-0123456789ab"


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    return STORES[request.param](tmp_path)


def raw(data: bytes) -> bytes:
    return data


def keyed(key: str, data: bytes) -> bytes:
    return data


async def journals(store: CheckpointStore, plan_id: str) -> dict[str, bytes | None]:
    return {item.name: item.value for item in await store.read_journals(plan_id, keyed)}


async def leased(store: CheckpointStore, plan_id: str, *snapshots: str) -> Lease:
    lease = await store.acquire_lease(plan_id)
    for checkpoint_id in snapshots:
        await store.write_snapshot(lease, checkpoint_id, f"snapshot {checkpoint_id}".encode())
    return lease


# -- reading an empty store -----------------------------------------------------------------------


async def test_an_empty_store_has_nothing(store: CheckpointStore) -> None:
    assert await store.plan_ids() == []
    assert await store.checkpoint_ids("p") == []
    assert await store.read_checkpoints("p", keyed) == []
    assert await store.read_journals("p", keyed) == []
    assert await store.read_latest("p", keyed, keyed) is None
    assert await store.find_plans(CP1) == []


@pytest.mark.parametrize("call", [
    pytest.param(lambda s: s.read_checkpoint("p", CP1, raw), id="read_checkpoint"),
    pytest.param(lambda s: s.delete_checkpoint("p", CP1), id="delete_checkpoint"),
])
async def test_unknown_checkpoints_are_not_found(store: CheckpointStore, call: Any) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        await call(store)
    assert info.value.checkpoint_id == CP1
    lease = await leased(store, "p", CP2)
    with pytest.raises(CheckpointNotFoundError):
        await call(store)
    await store.release_lease(lease)


def test_describe_names_the_plan_and_the_file_without_io(store: CheckpointStore) -> None:
    assert store.describe("plan-a").endswith("/plan-a")
    assert store.describe("plan-a", CP1 + ".json").endswith(f"/plan-a/{CP1}.json")
    assert Path(store.describe("plan-a", "journal-r.jsonl")).parent.name == "plan-a"


# -- snapshots --------------------------------------------------------------------------------------


async def test_snapshots_read_back_as_written(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP2, CP1)
    await store.write_snapshot(lease, CP3, b"\x00binary\xff" * 1000)
    assert sorted(await store.checkpoint_ids("p")) == [CP1, CP2, CP3]
    assert "p" in await store.plan_ids()
    assert await store.read_checkpoint("p", CP3, raw) == b"\x00binary\xff" * 1000
    items = {item.name: item for item in await store.read_checkpoints("p", keyed)}
    assert set(items) == {CP1, CP2, CP3}
    assert items[CP1].value == f"snapshot {CP1}".encode() and items[CP1].error is None
    assert items[CP3].size == 8 * 1000
    assert await store.find_plans(CP2) == ["p"]
    assert await store.checkpoint_ids("other") == []


async def test_a_checkpoint_id_is_written_once(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP1)
    with pytest.raises(CheckpointWriteError):
        await store.write_snapshot(lease, CP1, b"again")
    assert await store.read_checkpoint("p", CP1, raw) == f"snapshot {CP1}".encode()


async def test_latest_is_the_highest_sequence_whatever_the_order_of_writes(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP2, CP10, CP3)
    await store.append_journal(lease, "r1", b"one\n")
    latest = await store.read_latest("p", lambda key, data: (key, data), keyed)
    assert latest is not None
    assert latest.checkpoint_id == CP10 and latest.checkpoint == (CP10, f"snapshot {CP10}".encode())
    assert [(j.name, j.value) for j in latest.journals] == [("r1", b"one\n")]
    without = await store.read_latest("p", keyed)
    assert without is not None and without.journals == []


async def test_parse_errors_of_one_checkpoint_do_not_stop_a_bulk_read(store: CheckpointStore) -> None:
    await leased(store, "p", CP1, CP2)

    def parse(key: str, data: bytes) -> str:
        if key == CP1:
            raise CheckpointCorruptError(Path(store.describe("p", key + ".json")), "bad")
        return key

    items = {item.name: item for item in await store.read_checkpoints("p", parse)}
    assert items[CP2].value == CP2 and items[CP2].error is None
    assert items[CP1].value is None and isinstance(items[CP1].error, CheckpointCorruptError)


async def test_encode_and_parse_run_off_the_event_loop(store: CheckpointStore) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def encode() -> bytes:
        threads.append(threading.get_ident())
        return b"made off the loop"

    def parse(*args: Any) -> bytes:
        threads.append(threading.get_ident())
        data: bytes = args[-1]
        return data

    lease = await store.acquire_lease("p")
    await store.commit(lease, WriteBatch("r", journal=encode, snapshot=SnapshotWrite(CP1, encode)))
    assert await store.read_checkpoint("p", CP1, parse) == b"made off the loop"
    await store.read_checkpoints("p", parse)
    await store.read_journals("p", parse)
    await store.read_latest("p", parse, parse)
    assert len(threads) == 7 and loop_thread not in threads


# -- journals ---------------------------------------------------------------------------------------


async def test_each_run_has_its_own_append_only_journal(store: CheckpointStore) -> None:
    lease = await store.acquire_lease("p")
    await store.append_journal(lease, "run-b", b"b1\n")
    await store.append_journal(lease, "run-a", b"a1\n")
    await store.append_journal(lease, "run-b", b"b2\n")
    assert await journals(store, "p") == {"run-a": b"a1\n", "run-b": b"b1\nb2\n"}
    assert [j.name for j in await store.read_journals("p", keyed)] == ["run-a", "run-b"]
    assert [j.size for j in await store.read_journals("p", keyed)] == [3, 6]
    assert await journals(store, "other") == {}


# -- batches ----------------------------------------------------------------------------------------


async def test_a_batch_appends_then_snapshots_then_truncates_then_deletes(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP1, CP2)
    await store.append_journal(lease, "r", b"old\n")
    await store.append_journal(lease, "gone", b"x\n")
    await store.append_journal(lease, "kept", b"y\n")
    encoded = []

    def encode() -> bytes:
        encoded.append(True)
        return b"the snapshot"

    batch = WriteBatch("r", journal=b"new\n", snapshot=SnapshotWrite(CP3, encode), truncate_journal=True,
                       delete_checkpoints=[CP1, "cp-00000099-0123456789ab"], delete_journals=["gone", "nope"])
    await store.commit(lease, batch)
    assert encoded == [True]
    assert sorted(await store.checkpoint_ids("p")) == [CP2, CP3]
    assert await store.read_checkpoint("p", CP3, raw) == b"the snapshot"
    after = await journals(store, "p")
    assert after.pop("r", b"") == b"" and after == {"kept": b"y\n"}


async def test_a_batch_without_truncation_keeps_the_journal(store: CheckpointStore) -> None:
    lease = await store.acquire_lease("p")
    await store.commit(lease, WriteBatch("r", journal=lambda: b"one\n"))
    await store.commit(lease, WriteBatch("r", journal=b"two\n", snapshot=SnapshotWrite(CP1, lambda: b"s")))
    assert await journals(store, "p") == {"r": b"one\ntwo\n"}
    assert await store.checkpoint_ids("p") == [CP1]


async def test_a_failed_snapshot_stops_the_rest_of_the_batch(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP1)
    await store.append_journal(lease, "r", b"old\n")
    await store.append_journal(lease, "gone", b"x\n")

    def encode() -> bytes:
        raise OSError(28, "No space left on device")

    batch = WriteBatch("r", journal=b"new\n", snapshot=SnapshotWrite(CP2, encode), truncate_journal=True,
                       delete_checkpoints=[CP1], delete_journals=["gone"])
    with pytest.raises(OSError, match="No space left"):
        await store.commit(lease, batch)
    assert await store.checkpoint_ids("p") == [CP1]  # no snapshot, no deletion
    after = await journals(store, "p")
    # Not truncated; the append happened (or, in a transactional store, was undone with the rest).
    assert after["r"] in (b"old\n", b"old\nnew\n") and after["gone"] == b"x\n"


# -- deleting ---------------------------------------------------------------------------------------


async def test_delete_and_prune(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP1, CP2, CP3)
    await store.append_journal(lease, "r1", b"1\n")
    await store.append_journal(lease, "r2", b"2\n")
    await store.delete_checkpoint("p", CP2)
    with pytest.raises(CheckpointNotFoundError):
        await store.read_checkpoint("p", CP2, raw)
    await store.prune("p", [CP1, CP2], ["r1", "unknown"])
    assert await store.checkpoint_ids("p") == [CP3]
    assert await journals(store, "p") == {"r2": b"2\n"}
    await store.prune("nothing-here", [CP1], ["r1"])  # missing ones are fine


async def test_delete_plan_removes_everything_and_the_plan_starts_afresh(store: CheckpointStore) -> None:
    lease = await leased(store, "p", CP1)
    await store.append_journal(lease, "r", b"1\n")
    await leased(store, "q", CP2)
    await store.delete_plan(lease)
    await store.release_lease(lease)
    assert "p" not in await store.plan_ids() and "q" in await store.plan_ids()
    assert await store.checkpoint_ids("p") == [] and await journals(store, "p") == {}
    assert await store.read_latest("p", keyed, keyed) is None
    again = await leased(store, "p", CP1)
    assert await store.checkpoint_ids("p") == [CP1]
    await store.release_lease(again)


# -- leases -----------------------------------------------------------------------------------------


async def test_a_lease_is_exclusive_until_released(store: CheckpointStore) -> None:
    first = await store.acquire_lease("p")
    assert first.plan_id == "p"
    with pytest.raises(PlanLockedError) as info:
        await store.acquire_lease("p")
    assert info.value.plan_id == "p"
    other = await store.acquire_lease("q")  # other plans are not affected
    await store.release_lease(first)
    await store.release_lease(first)  # idempotent
    second = await store.acquire_lease("p")
    assert second.token > first.token
    third_plan = await store.acquire_lease("r")
    assert third_plan.token != second.token or third_plan.plan_id != second.plan_id
    for lease in (second, other, third_plan):
        await store.release_lease(lease)


async def test_fencing_tokens_grow_with_every_grant(store: CheckpointStore) -> None:
    tokens = []
    for _ in range(5):
        lease = await store.acquire_lease("p")
        tokens.append(lease.token)
        await store.release_lease(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == 5


async def test_renew_keeps_a_held_lease_and_refuses_a_released_one(store: CheckpointStore) -> None:
    lease = await store.acquire_lease("p")
    renewed = await store.renew_lease(lease)
    assert renewed.plan_id == "p" and renewed.token == lease.token
    await store.write_snapshot(renewed, CP1, b"s")
    await store.release_lease(renewed)
    with pytest.raises(PlanLockedError):
        await store.renew_lease(lease)


@pytest.mark.parametrize("write", [
    pytest.param(lambda s, lease: s.write_snapshot(lease, CP2, b"late"), id="write_snapshot"),
    pytest.param(lambda s, lease: s.append_journal(lease, "r", b"late\n"), id="append_journal"),
    pytest.param(lambda s, lease: s.commit(lease, WriteBatch("r", delete_checkpoints=[CP1])), id="commit"),
    pytest.param(lambda s, lease: s.delete_plan(lease), id="delete_plan"),
])
async def test_writes_under_a_lease_no_longer_held_are_refused(store: CheckpointStore, write: Any) -> None:
    stale = await leased(store, "p", CP1)
    await store.release_lease(stale)
    with pytest.raises(PlanLockedError):
        await write(store, stale)
    current = await store.acquire_lease("p")  # and after someone else took the plan over
    with pytest.raises(PlanLockedError):
        await write(store, stale)
    assert await store.checkpoint_ids("p") == [CP1] and await journals(store, "p") == {}
    await store.release_lease(current)


async def test_only_one_of_many_concurrent_acquirers_wins(store: CheckpointStore) -> None:
    won: list[Lease] = []
    refused = 0

    async def take() -> None:
        nonlocal refused
        try:
            won.append(await store.acquire_lease("p"))
        except PlanLockedError:
            refused += 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(take)
    assert len(won) == 1 and refused == 7
    await store.release_lease(won[0])


async def test_concurrent_writers_of_different_plans(store: CheckpointStore) -> None:
    async def write_plan(plan_id: str) -> None:
        lease = await store.acquire_lease(plan_id)
        for sequence in range(1, 6):
            checkpoint_id = f"cp-{sequence:08d}-0123456789ab"
            await store.commit(lease, WriteBatch(
                "r", journal=f"{plan_id} {sequence}\n".encode(),
                snapshot=SnapshotWrite(checkpoint_id, lambda p=plan_id: p.encode()),
                delete_checkpoints=[f"cp-{sequence - 2:08d}-0123456789ab"] if sequence > 2 else []))
        await store.release_lease(lease)

    plans = [f"plan-{i}" for i in range(6)]
    async with anyio.create_task_group() as tg:
        for plan_id in plans:
            tg.start_soon(write_plan, plan_id)
    assert await store.plan_ids() == plans
    for plan_id in plans:
        assert sorted(await store.checkpoint_ids(plan_id)) == [f"cp-{s:08d}-0123456789ab" for s in (4, 5)]
        expected = "".join(f"{plan_id} {s}\n" for s in range(1, 6)).encode()
        assert (await journals(store, plan_id))["r"] == expected


# -- the whole library on each store -------------------------------------------------------------------


async def test_runs_resume_and_retention_work_on_every_store(store: CheckpointStore) -> None:
    calls: list[str] = []

    async def work(ctx: NodeContext) -> str:
        calls.append(ctx.node.id)
        return ctx.node.id

    manager = WorkflowPersistenceManager(store=store, keep_last=2)
    nodes = [node("a"), node("b", "a"), node("c", "b"), node("d", "c")]
    planner = MetaPlanner(planner=StaticPlanner(nodes), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=1)
    result = await planner.execute_with_resume("conformance")
    assert result.status == "completed" and calls == ["a", "b", "c", "d"]
    again = await planner.execute_with_resume("conformance")
    assert again.nodes_run == 0 and calls == ["a", "b", "c", "d"]
    infos = await manager.list_checkpoints(result.plan_id)
    assert [i.reason for i in infos] == ["final", "interval"]
    assert await manager.verify() == []
    live = {(await manager.get_checkpoint(i.checkpoint_id)).run_id for i in infos}
    assert {j.name for j in await store.read_journals(result.plan_id, keyed)} <= live
    await manager.delete_plan(result.plan_id)
    assert await manager.list_checkpoints() == []


# -- file store only ---------------------------------------------------------------------------------


class RecordingStore(FileCheckpointStore):
    """Records the file operations a batch makes, and whether they ran in one `apply` call."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str, int]] = []
        self.applying = 0

    def apply(self, plan_id: str, batch: WriteBatch) -> None:
        self.applying += 1
        try:
            super().apply(plan_id, batch)
        finally:
            self.applying -= 1

    def _note(self, operation: str, name: str) -> None:
        self.calls.append((operation, name, self.applying))

    def append(self, plan_id: str, name: str, data: bytes) -> None:
        self._note("append", name)
        super().append(plan_id, name, data)

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        self._note("write_atomic", name)
        super().write_atomic(plan_id, name, data)

    def truncate(self, plan_id: str, name: str) -> None:
        self._note("truncate", name)
        super().truncate(plan_id, name)

    def delete(self, plan_id: str, name: str) -> None:
        self._note("delete", name)
        super().delete(plan_id, name)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_file_store_applies_a_batch_in_order_in_one_thread_hop(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "cp")
    lease = await leased(store, "p", CP1)
    store.calls.clear()
    await store.commit(lease, WriteBatch("r", journal=b"x\n", snapshot=SnapshotWrite(CP2, lambda: b"s"),
                                         truncate_journal=True, delete_checkpoints=[CP1],
                                         delete_journals=["old"]))
    assert store.calls == [
        ("append", "journal-r.jsonl", 1), ("write_atomic", CP2 + ".json", 1),
        ("truncate", "journal-r.jsonl", 1), ("delete", CP1 + ".json", 1), ("delete", "journal-old.jsonl", 1),
    ]
    folder = tmp_path / "cp" / "p"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", CP2 + ".json", "journal-r.jsonl"]
    assert (folder / "journal-r.jsonl").read_bytes() == b""
    await store.release_lease(lease)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_file_store_lease_is_an_flock_that_a_second_store_object_sees(tmp_path: Path) -> None:
    lease = await FileCheckpointStore(tmp_path / "cp").acquire_lease("p")
    with pytest.raises(PlanLockedError) as info:
        await FileCheckpointStore(tmp_path / "cp").acquire_lease("p")
    assert info.value.path == tmp_path / "cp" / "p" / ".lock" and "pid=" in str(info.value)
    with pytest.raises(PlanLockedError):  # a lease is only good in the store that granted it
        await FileCheckpointStore(tmp_path / "elsewhere").commit(lease, WriteBatch("r", journal=b"x\n"))
    await FileCheckpointStore(tmp_path / "cp").release_lease(lease)
    assert (tmp_path / "cp" / "p" / ".lock").read_bytes() == b""
