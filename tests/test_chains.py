"""Incremental checkpoints (schema version 2): bases, deltas, their chains, damage, retention.

Each checkpoint must read back as the whole state as of it. The reference here is a reader
written from docs/checkpoints.md alone (`by_the_book`), over the raw files: if the code and the
documented format part ways, these tests say so.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, random_dag
from tests.test_store_conformance import STORES
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointStore,
    CheckpointWritten,
    FileCheckpointStore,
    MetaPlanner,
    NodeContext,
    ProgressEvent,
    WorkflowPersistenceManager,
)
from vibe_planner.persistence._codec import encode_checkpoint

pytestmark = pytest.mark.anyio
SCRIPT = Path(sys.executable).parent / "vibe-planner"


async def work(ctx: NodeContext) -> dict[str, Any]:
    return {"id": ctx.node.id, "text": "x" * 200, "inputs": sorted(ctx.inputs)}


def planner_for(manager: WorkflowPersistenceManager, size: int = 40, **options: Any) -> MetaPlanner:
    """One node at a time, each waiting for the snapshot taken after the one before it: one
    snapshot per node, each with one change (none coalesce, however fast the nodes are)."""
    written, snapshot = 0, anyio.Event()
    calls = 0

    def on_event(event: ProgressEvent) -> None:
        nonlocal written, snapshot
        if isinstance(event, CheckpointWritten) and event.reason == "interval":
            written += 1
            snapshot.set()
            snapshot = anyio.Event()

    async def gated(ctx: NodeContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        turn = calls
        while written < turn - 1:
            await snapshot.wait()
        return await work(ctx)

    return MetaPlanner(planner=StaticPlanner(random_dag(size, 7)), handlers={"work": gated},
                       persistence_manager=manager, checkpoint_interval=1, max_concurrency=1,
                       progress_callback=on_event, **options)


def documents(folder: Path) -> list[dict[str, Any]]:
    """Every checkpoint document of a plan folder, in sequence order (gzip read as well)."""
    found = []
    for path in sorted(folder.glob("cp-*.json")):
        raw = path.read_bytes()
        found.append(orjson.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw))
    return found


def by_the_book(folder: Path, checkpoint_id: str) -> dict[str, Any]:
    """The node results as of *checkpoint_id*, read as docs/checkpoints.md says (no library)."""
    docs = {d["checkpoint_id"]: d for d in documents(folder)}
    doc = docs[checkpoint_id]
    chain = [doc]
    while chain[-1]["kind"] == "delta":
        parent = docs[chain[-1]["parent"]]
        assert parent["checksum"] == chain[-1]["parent_checksum"]
        chain.append(parent)
    chain.reverse()
    assert chain[0]["kind"] == "base" and chain[0]["checkpoint_id"] == doc.get("base", checkpoint_id)
    results = dict(chain[0]["node_results"])
    journal = folder / f"journal-{doc['run_id']}.jsonl"
    lines = journal.read_bytes().splitlines() if journal.exists() else []
    records = [orjson.loads(line[9:])["result"] for line in lines if b'"result"' in line]
    for delta in chain[1:]:
        if delta["journal"]:
            first, nodes = delta["journal"]["first"], delta["journal"]["nodes"]
            for offset, node_id in enumerate(nodes):
                assert records[first + offset]["node_id"] == node_id
                results[node_id] = records[first + offset]
        results.update(delta["node_results"])
    return results


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    return STORES[request.param](tmp_path)


@pytest.mark.parametrize("durability", ["journal", "interval"])
async def test_every_checkpoint_of_a_chain_reads_back_whole(tmp_path: Path, durability: str) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "cp")
    result = await planner_for(manager, durability=durability).execute("chains")
    assert result.status == "completed"
    folder = tmp_path / "cp" / result.plan_id
    docs = documents(folder)
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "base" and "delta" in kinds and kinds.count("base") >= 2, kinds
    infos = {i.checkpoint_id: i for i in await manager.list_checkpoints(result.plan_id)}
    assert set(infos) == {d["checkpoint_id"] for d in docs} == set(result.checkpoints_written)
    previous: set[str] = set()
    for doc in docs:
        checkpoint = await manager.get_checkpoint(doc["checkpoint_id"])
        expected = by_the_book(folder, doc["checkpoint_id"])
        assert sorted(checkpoint.node_results) == sorted(expected)
        for node_id, record in expected.items():
            got = checkpoint.node_results[node_id]
            assert (got.status, got.output, got.attempts) == (
                record["status"], record["output"], record["attempts"])
        assert set(checkpoint.completed_nodes) >= previous  # completions only accumulate
        previous = set(checkpoint.completed_nodes)
        assert (checkpoint.kind, checkpoint.base) == (doc["kind"], doc.get("base"))
        assert infos[doc["checkpoint_id"]].completed_nodes == len(checkpoint.completed_nodes)
        assert infos[doc["checkpoint_id"]].total_nodes == 40
    assert await manager.verify() == []
    final = await manager.latest(result.plan_id)
    assert final is not None and final.reason == "final" and len(final.completed_nodes) == 40
    assert {k: r.output for k, r in final.node_results.items()} == {
        k: r.output for k, r in result.node_results.items()}
    if durability == "journal":
        # Completed results are written once: in the journal, pointed at by the deltas.
        assert all(d["node_results"] == {} for d in docs if d["kind"] == "delta")


async def test_a_base_comes_when_the_chain_outgrows_it(tmp_path: Path) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "cp", base_ratio=1)
    result = await planner_for(manager, size=60, durability="interval").execute("ratio")
    folder = tmp_path / "cp" / result.plan_id
    sizes = {p.stem: p.stat().st_size for p in folder.glob("cp-*.json")}
    chain_bytes, base_size = 0, 0
    for doc in documents(folder):
        if doc["kind"] == "base":
            if base_size:  # a new base only once the chain reached base_ratio x the last base
                assert chain_bytes >= base_size
            chain_bytes, base_size = 0, sizes[doc["checkpoint_id"]]
        else:
            assert chain_bytes < base_size  # ... and not before
            chain_bytes += sizes[doc["checkpoint_id"]]
    every = WorkflowPersistenceManager(tmp_path / "all", base_ratio=0)
    done = await planner_for(every, size=10, durability="interval").execute("all bases")
    assert {d["kind"] for d in documents(tmp_path / "all" / done.plan_id)} == {"base"}


async def test_chains_work_on_every_store(store: CheckpointStore) -> None:
    manager = WorkflowPersistenceManager(store=store)
    result = await planner_for(manager, size=20).execute("stores")
    infos = await manager.list_checkpoints(result.plan_id)
    states = [await manager.get_checkpoint(i.checkpoint_id) for i in infos]
    assert "delta" in {s.kind for s in states}
    assert [len(s.completed_nodes) for s in states] == sorted((len(s.completed_nodes) for s in states),
                                                             reverse=True)
    assert await manager.verify() == []
    middle = next(s for s in states if s.kind == "delta" and 0 < len(s.completed_nodes) < 20)
    resumed = await planner_for(manager, size=20).execute_with_resume(
        "stores", checkpoint_id=middle.checkpoint_id)
    assert resumed.status == "completed" and resumed.resumed_from == middle.checkpoint_id
    assert resumed.nodes_restored == len(middle.completed_nodes)
    assert resumed.nodes_run == 20 - len(middle.completed_nodes)


class Stop(BaseException):
    """A handler's BaseException: the run stops, after a ``cancelled`` snapshot."""


async def test_resume_from_the_latest_delta_runs_nothing_recorded_again(tmp_path: Path) -> None:
    ran: list[str] = []
    stop_at = 25

    async def counting(ctx: NodeContext) -> str:
        ran.append(ctx.node.id)
        if len(ran) == stop_at:
            raise Stop
        return ctx.node.id

    manager = WorkflowPersistenceManager(tmp_path / "cp")
    planner = MetaPlanner(planner=StaticPlanner(random_dag(40, 3)), handlers={"work": counting},
                          persistence_manager=manager, checkpoint_interval=2, max_concurrency=1)
    with pytest.raises(Stop):
        await planner.execute("stop")
    done_before = ran[: stop_at - 1]
    latest = await manager.latest((await planner.plan("stop")).plan_id)
    assert latest is not None and latest.kind == "delta" and latest.reason == "cancelled"
    assert sorted(latest.completed_nodes) == sorted(done_before)
    ran.clear()
    stop_at = 0
    result = await planner.execute_with_resume("stop")
    assert result.status == "completed" and not set(ran) & set(done_before)
    assert sorted(ran + done_before) == sorted(n.id for n in random_dag(40, 3))


# -- damage -------------------------------------------------------------------------------------


Chained = tuple[WorkflowPersistenceManager, Path, list[dict[str, Any]]]


async def chained(tmp_path: Path, size: int = 40) -> Chained:
    manager = WorkflowPersistenceManager(tmp_path / "cp")
    result = await planner_for(manager, size=size).execute("damage")
    folder = tmp_path / "cp" / result.plan_id
    return manager, folder, documents(folder)


def second_chain(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first chain (its base and deltas) and everything after it."""
    starts = [i for i, d in enumerate(docs) if d["kind"] == "base"]
    assert len(starts) >= 2 and starts[1] - starts[0] >= 4, [d["kind"] for d in docs]
    return docs[: starts[1]], docs[starts[1]:]


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "deleted", "replaced"])
async def test_damage_in_a_chain_names_the_file_and_spares_other_chains(
    tmp_path: Path, damage: str
) -> None:
    manager, folder, docs = await chained(tmp_path)
    first, rest = second_chain(docs)
    victim = first[2]  # a delta in the middle of the first chain
    path = folder / f"{victim['checkpoint_id']}.json"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped-byte":
        path.write_bytes(raw.replace(b'"reason":"', b'"reason":"X', 1))
    elif damage == "deleted":
        path.unlink()
    else:  # another valid document under the same name: its own checksum is right
        fields = {k: v for k, v in orjson.loads(raw).items() if k != "checksum"}
        fields["created_at"] = "2020-01-01T00:00:00+00:00"
        path.write_bytes(encode_checkpoint(fields))
    for doc in first[3:]:  # every later checkpoint of that chain names the damaged file
        with pytest.raises(CheckpointCorruptError) as info:
            await manager.get_checkpoint(doc["checkpoint_id"])
        assert info.value.path == path, info.value
    for doc in first[:2] + rest:  # the others read as before
        checkpoint = await manager.get_checkpoint(doc["checkpoint_id"])
        assert checkpoint.checkpoint_id == doc["checkpoint_id"]
    problems = await manager.verify()
    assert problems and {p.path for p in problems} == {path}
    assert (await manager.latest(docs[-1]["plan_id"])) is not None  # the latest chain is whole


async def test_damage_in_the_latest_chain_stops_a_resume(tmp_path: Path) -> None:
    manager, folder, docs = await chained(tmp_path)
    base = [d for d in docs if d["kind"] == "base"][-1]
    path = folder / f"{base['checkpoint_id']}.json"
    damaged = path.read_bytes()[:-10]
    path.write_bytes(damaged)
    before = sorted(p.name for p in folder.iterdir())
    planner = planner_for(manager)
    with pytest.raises(CheckpointCorruptError) as info:
        await planner.execute_with_resume("damage")
    assert info.value.path == path
    assert path.read_bytes() == damaged  # left in place; nothing rebuilt, nothing written
    assert sorted(p.name for p in folder.iterdir()) == before


async def test_a_journal_that_lost_records_a_delta_points_at_is_named(tmp_path: Path) -> None:
    manager, folder, docs = await chained(tmp_path, size=12)
    journal = next(folder.glob("journal-*.jsonl"))
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3]))  # records 3 and later are gone
    pointing = [d for d in docs if d["kind"] == "delta" and d["journal"]
                and d["journal"]["first"] + len(d["journal"]["nodes"]) > 3]
    assert pointing
    with pytest.raises(CheckpointCorruptError) as info:
        await manager.get_checkpoint(pointing[-1]["checkpoint_id"])
    assert info.value.path == journal and "needs records" in info.value.reason


# -- retention ----------------------------------------------------------------------------------


async def test_keep_last_never_deletes_a_base_a_kept_delta_needs(tmp_path: Path) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "cp", keep_last=2)
    result = await planner_for(manager, size=40).execute("retention")
    folder = tmp_path / "cp" / result.plan_id
    docs = documents(folder)
    kept = {d["checkpoint_id"] for d in docs}
    newest = result.checkpoints_written[-2:]
    assert set(newest) <= kept and len(kept) < len(result.checkpoints_written)
    for checkpoint_id in kept:
        checkpoint = await manager.get_checkpoint(checkpoint_id)  # every chain is whole
        assert checkpoint.base is None or checkpoint.base in kept
    # What is kept is exactly the newest two and the chains they need.
    bases = [d.get("base", d["checkpoint_id"]) for d in docs if d["checkpoint_id"] in newest]
    oldest = min(sequence(i) for i in bases)
    assert kept == {i for i in result.checkpoints_written if sequence(i) >= oldest}
    pruned = await WorkflowPersistenceManager(tmp_path / "cp").prune(result.plan_id, keep_last=1)
    left = {d["checkpoint_id"] for d in documents(folder)}
    assert left == kept - set(pruned) and newest[-1] in left
    last = documents(folder)[-1]
    assert last.get("base", last["checkpoint_id"]) in left
    assert await manager.verify() == []


def sequence(checkpoint_id: str) -> int:
    return int(checkpoint_id.split("-")[1])


# -- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "magic"), [("gzip", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd")])
async def test_compressed_checkpoints_read_resume_and_show(
    tmp_path: Path, compression: str, magic: bytes
) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "cp", compression=compression)  # type: ignore[arg-type]
    result = await planner_for(manager, size=12).execute("compressed")
    folder = tmp_path / "cp" / result.plan_id
    assert all(p.read_bytes().startswith(magic) for p in folder.glob("cp-*.json"))
    plain = WorkflowPersistenceManager(tmp_path / "cp")  # no setting needed to read them
    assert await plain.verify() == []
    for checkpoint_id in result.checkpoints_written:
        assert (await plain.get_checkpoint(checkpoint_id)).checkpoint_id == checkpoint_id
    delta = result.checkpoints_written[-1]
    shown = await anyio.run_process(
        [str(SCRIPT), "checkpoints", "show", delta, "--checkpoint-dir", "cp"], cwd=tmp_path,
        check=False)
    assert shown.returncode == 0, shown.stderr
    assert delta in shown.stdout.decode() and "12/12 completed" in shown.stdout.decode()
    again = await planner_for(plain, size=12).execute_with_resume("compressed")
    assert again.nodes_run == 0


def test_zstd_without_the_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"zstandard package.*vibe-planner\[zstd\]"):
        WorkflowPersistenceManager(compression="zstd")
    with pytest.raises(ValueError, match="compression must be"):
        WorkflowPersistenceManager(compression="lzma")  # type: ignore[arg-type]


def test_a_zstd_file_without_the_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "cp", compression="zstd")
    result = anyio.run(planner_for(manager, size=3).execute, "zstd")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(CheckpointCorruptError, match=r"pip install 'vibe-planner\[zstd\]'"):
        anyio.run(WorkflowPersistenceManager(tmp_path / "cp").get_checkpoint,
                  result.checkpoints_written[0])


async def test_a_lone_delta_is_refused_by_the_whole_document_decoder(tmp_path: Path) -> None:
    from vibe_planner.persistence._codec import decode_checkpoint

    _, folder, docs = await chained(tmp_path, size=6)
    delta = next(d for d in docs if d["kind"] == "delta")
    path = folder / f"{delta['checkpoint_id']}.json"
    with pytest.raises(CheckpointCorruptError, match="read with its chain"):
        decode_checkpoint(path.read_bytes(), path)


class PrunedWhileChainRead(FileCheckpointStore):
    """Right before a delta's chain is read, a writer adds a newer base and keep_last=1 deletes
    the old chain (what real retention does once the newest is a base)."""

    def __init__(self, root: Path, newer: Path, doomed: list[Path]) -> None:
        super().__init__(root)
        self.newer, self.doomed = newer, doomed

    async def read_many(self, plan_id: str, checkpoint_ids: Any, parse: Any) -> Any:
        if self.doomed:
            shutil.copy2(self.newer, self.location(plan_id, self.newer.name))
            for path in self.doomed:
                self.location(plan_id, path.name).unlink()
            self.doomed = []
        return await super().read_many(plan_id, checkpoint_ids, parse)


async def test_a_chain_pruned_while_it_is_read_reads_the_new_latest(tmp_path: Path) -> None:
    manager = WorkflowPersistenceManager(tmp_path / "run")
    first = await planner_for(manager, size=6).execute("pruned chain")
    second = await planner_for(manager, size=6).execute("pruned chain")  # a new run: a new base
    folder = tmp_path / "run" / first.plan_id
    old_chain = [folder / f"{i}.json" for i in first.checkpoints_written]
    newer = folder / f"{second.checkpoints_written[0]}.json"
    assert documents(folder)[len(old_chain)]["kind"] == "base"
    copy = tmp_path / "cp" / first.plan_id
    copy.mkdir(parents=True, mode=0o700)
    for path in old_chain:
        shutil.copy2(path, copy / path.name)
    reader = WorkflowPersistenceManager(store=PrunedWhileChainRead(tmp_path / "cp", newer, old_chain))
    latest = await reader.latest(first.plan_id)
    assert latest is not None and latest.checkpoint_id == newer.stem
