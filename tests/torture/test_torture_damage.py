"""Torn and damaged files, loaded through the public API from a real checkpoint folder.

The folder under test is made by a real run that stopped when its disk "filled up": an older
snapshot (``planned``), a newer one (``interval``) and the journal of the completions after it.
Then one file at a time is truncated at many byte offsets, bit-flipped, replaced by garbage,
by an empty file, by JSON of another schema or version, or by a directory, and the folder is
read through `WorkflowPersistenceManager` (``latest``, ``get_checkpoint``,
``list_checkpoints``, ``verify``) and `MetaPlanner.execute_with_resume`.

The policy checked (docs/checkpoints.md):
- a damaged newest snapshot is a `CheckpointCorruptError` naming the file and the reason;
  the library does not silently fall back to an older snapshot;
- a damaged older snapshot is reported (list, verify, get) but does not stop a resume;
- the journal is trusted up to its first torn or damaged record; the nodes after it run again;
- reading never changes the folder: same files, same bytes, same modes.

`tests/test_codec.py` covers the codec functions; this module goes through the manager,
the planner and the real folder.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, random_dag
from tests.torture.support import FailingStore, Tally, enospc_write_error, tree, tree_diff
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointWriteError,
    MetaPlanner,
    NodeContext,
    Vibe,
    WorkflowPersistenceManager,
)
from vibe_planner._models import SCHEMA_VERSION

NODES = random_dag(16, 5)
VIBE = Vibe(description="torture: damaged files")
PLAN_ID = VIBE.default_plan_id()


class Work:
    """A node handler that counts its calls; outputs depend on the node and its inputs."""

    def __init__(self, delay: float = 0) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = delay

    async def __call__(self, ctx: NodeContext) -> dict[str, Any]:
        self.calls[ctx.node.id] += 1
        await anyio.sleep(self.delay)
        digest = hashlib.sha256(
            orjson.dumps([ctx.node.id, ctx.inputs], option=orjson.OPT_SORT_KEYS)
        )
        return {"id": ctx.node.id, "digest": digest.hexdigest()[:12]}


def planner_for(checkpoint_dir: Path, work: Work, **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(
        planner=StaticPlanner(NODES),
        handlers={"work": work},
        persistence_manager=WorkflowPersistenceManager(checkpoint_dir),
        max_concurrency=1,
        checkpoint_interval=5,
        **kwargs,
    )


@dataclass(frozen=True)
class Pristine:
    """The undamaged folder and what it records, read independently from its files."""

    root: Path
    older: str
    newest: str
    journal: str
    snapshot_done: frozenset[str]
    journal_lines: list[tuple[int, str]]  # (end offset after the newline, node id)
    outputs: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.root / PLAN_ID

    def copy_to(self, target: Path) -> Path:
        shutil.copytree(self.root, target, symlinks=True)
        return target / PLAN_ID

    def trusted_before(self, end: int) -> set[str]:
        """Node ids of the journal records that end (newline included) by byte *end*."""
        return {node_id for line_end, node_id in self.journal_lines if line_end <= end}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    base = tmp_path_factory.mktemp("damage")
    clean = anyio.run(planner_for(base / "clean", Work()).execute, VIBE)
    assert clean.status == "completed"

    # A real run whose third snapshot write fails the way a full disk does: it stops, leaving
    # the planned and first interval snapshots and the journal of the completions after them.
    # (Nodes are slow enough for the interval snapshots not to coalesce into one.)
    root = base / "cp"
    store = FailingStore(
        root, 2, make_error=enospc_write_error, operations=frozenset({"write_atomic"})
    )
    planner = MetaPlanner(
        planner=StaticPlanner(NODES),
        handlers={"work": Work(delay=0.01)},
        # Every snapshot a base (version 1's layout in the version-2 format), so that the
        # journal holds only the completions after the newest snapshot; damage to deltas and
        # their chains is tests/test_chains.py's.
        persistence_manager=WorkflowPersistenceManager(store=store, base_ratio=0),
        max_concurrency=1,
        checkpoint_interval=5,
    )
    with pytest.raises(CheckpointWriteError):
        anyio.run(planner.execute_with_resume, VIBE)

    snapshots = sorted((root / PLAN_ID).glob("cp-*.json"))
    assert len(snapshots) == 2
    newest = orjson.loads(snapshots[-1].read_bytes())
    journal = f"journal-{newest['run_id']}.jsonl"
    raw = (root / PLAN_ID / journal).read_bytes()
    lines, end = [], 0
    for line in raw.splitlines(keepends=True):
        end += len(line)
        crc, _, payload = line.rstrip(b"\n").partition(b" ")
        assert int(crc, 16) == zlib.crc32(payload)
        lines.append((end, orjson.loads(payload)["result"]["node_id"]))
    assert len(lines) >= 3, "the journal should hold several completions after the snapshot"
    return Pristine(
        root=root,
        older=snapshots[0].stem,
        newest=snapshots[1].stem,
        journal=journal,
        snapshot_done=frozenset(newest["completed_nodes"]),
        journal_lines=lines,
        outputs=clean.outputs,
    )


def sample_offsets(size: int, count: int, rng: random.Random, *, long_mode: bool) -> list[int]:
    """Every offset under ``--long``; else both ends and a random sample of the middle."""
    if long_mode or size <= count:
        return list(range(size))
    ends = set(range(min(48, size))) | set(range(max(0, size - 48), size))
    middle = rng.sample(range(size), count - len(ends)) if count > len(ends) else []
    return sorted(ends | set(middle))


# -- expectations shared by the tests ------------------------------------------------------------


async def expect_corrupt_everywhere(
    manager: WorkflowPersistenceManager, path: Path, words: str
) -> None:
    """A damaged newest snapshot: every way of loading it says which file and why."""
    with pytest.raises(CheckpointCorruptError) as latest:
        await manager.latest(PLAN_ID)
    check_error(latest.value, path, words)
    with pytest.raises(CheckpointCorruptError) as got:
        await manager.get_checkpoint(path.stem)
    check_error(got.value, path, words)
    infos = {info.checkpoint_id: info for info in await manager.list_checkpoints(PLAN_ID)}
    assert infos[path.stem].error, "list_checkpoints must flag the damaged file"
    assert sum(info.error is not None for info in infos.values()) == 1
    problems = await manager.verify(PLAN_ID)
    assert path in [p.path for p in problems]


def check_error(exc: CheckpointCorruptError, path: Path, words: str) -> None:
    assert exc.path == path
    assert exc.reason and exc.reason in str(exc)
    assert words in exc.reason, exc.reason


def resume_copy(pristine: Pristine, target: Path, damage: Any) -> tuple[Any, Work, Path]:
    """Copy the folder, damage it, resume it; return (result or error, handler, folder)."""
    folder = pristine.copy_to(target)
    damage(folder)
    before = tree(folder)
    work = Work()
    try:
        outcome: Any = anyio.run(planner_for(target, work).execute_with_resume, VIBE)
    except CheckpointCorruptError as exc:
        outcome = exc
        diff = tree_diff(before, tree(folder))
        assert not any(diff.values()), f"a failed resume changed the folder: {diff}"
    else:
        after = tree(folder)
        lost = {k for k in before if k != ".lock" and after.get(k) != before[k]}
        assert not lost, f"a resume changed or deleted files it found: {sorted(lost)}"
    return outcome, work, folder


def expect_resumed(pristine: Pristine, outcome: Any, work: Work, trusted: set[str]) -> None:
    """The resume ran exactly the nodes the files did not record, and got the clean outputs."""
    assert not isinstance(outcome, BaseException), outcome
    recorded = set(pristine.snapshot_done) | trusted
    assert set(work.calls) == {node.id for node in NODES} - recorded
    assert all(count == 1 for count in work.calls.values())
    assert outcome.status == "completed" and outcome.outputs == pristine.outputs


# -- the newest snapshot ---------------------------------------------------------------------------


def test_newest_snapshot_truncated_at_many_offsets(
    pristine: Pristine, tmp_path: Path, long_mode: bool, tally: Tally
) -> None:
    folder = pristine.copy_to(tmp_path / "cp")
    path = folder / f"{pristine.newest}.json"
    raw = path.read_bytes()
    offsets = sample_offsets(len(raw), 500, random.Random(1), long_mode=long_mode)
    manager = WorkflowPersistenceManager(tmp_path / "cp")

    async def check_all() -> None:
        for offset in offsets:
            path.write_bytes(raw[:offset])
            before = tree(folder)
            words = "empty file" if offset == 0 else "not valid JSON"
            await expect_corrupt_everywhere(manager, path, words)
            diff = tree_diff(before, tree(folder))
            assert not any(diff.values()), f"offset {offset}: reading changed the folder: {diff}"

    anyio.run(check_all)
    tally.add("damage: snapshot truncation offsets tried", len(offsets))


def test_resume_from_a_truncated_newest_snapshot_is_an_error_and_touches_nothing(
    pristine: Pristine, tmp_path: Path, long_mode: bool, tally: Tally
) -> None:
    size = (pristine.folder / f"{pristine.newest}.json").stat().st_size
    offsets = sample_offsets(size, 25, random.Random(2), long_mode=False)
    if long_mode:
        offsets = sorted(set(offsets) | set(range(0, size, 7)))
    for offset in offsets:

        def cut(folder: Path, offset: int = offset) -> None:
            path = folder / f"{pristine.newest}.json"
            path.write_bytes(path.read_bytes()[:offset])

        outcome, work, folder = resume_copy(pristine, tmp_path / f"o{offset}", cut)
        assert isinstance(outcome, CheckpointCorruptError), outcome
        assert outcome.path == folder / f"{pristine.newest}.json"
        assert not work.calls, "nothing runs when the state to resume from is unreadable"
        shutil.rmtree(tmp_path / f"o{offset}")
    tally.add("damage: resumes from a truncated snapshot", len(offsets))


def test_newest_snapshot_bit_flips(
    pristine: Pristine, tmp_path: Path, long_mode: bool, tally: Tally
) -> None:
    folder = pristine.copy_to(tmp_path / "cp")
    path = folder / f"{pristine.newest}.json"
    raw = path.read_bytes()
    rng = random.Random(3)
    flips = [(rng.randrange(len(raw)), rng.randrange(8)) for _ in range(3000 if long_mode else 300)]
    manager = WorkflowPersistenceManager(tmp_path / "cp")

    async def check_all() -> None:
        for offset, bit in flips:
            damaged = bytearray(raw)
            damaged[offset] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            await expect_corrupt_everywhere(manager, path, "")

    anyio.run(check_all)
    path.write_bytes(raw)
    assert anyio.run(manager.verify) == []
    tally.add("damage: snapshot bit flips tried", len(flips))


# -- the journal -----------------------------------------------------------------------------------


def test_journal_truncated_at_every_offset_is_trusted_up_to_its_last_whole_record(
    pristine: Pristine, tmp_path: Path, tally: Tally
) -> None:
    folder = pristine.copy_to(tmp_path / "cp")
    path = folder / pristine.journal
    raw = path.read_bytes()
    boundaries = {0} | {end for end, _ in pristine.journal_lines}
    manager = WorkflowPersistenceManager(tmp_path / "cp")

    async def check_all() -> None:
        for offset in range(len(raw) + 1):
            path.write_bytes(raw[:offset])
            before = tree(folder)
            restored = await manager.restore(PLAN_ID)
            assert restored is not None and restored.checkpoint.checkpoint_id == pristine.newest
            assert {r["node_id"] for r in restored.journal_records} == pristine.trusted_before(
                offset
            )
            problems = [p for p in await manager.verify(PLAN_ID) if p.path == path]
            torn = offset not in boundaries
            assert (restored.journal_problem is not None) == torn, offset
            assert len(problems) == torn, (offset, problems)
            latest = await manager.latest(PLAN_ID)
            assert latest is not None and latest.checkpoint_id == pristine.newest
            assert tree(folder) == before

    anyio.run(check_all)
    tally.add("damage: journal truncation offsets tried", len(raw) + 1)


def test_resume_after_a_torn_journal_reruns_exactly_the_untrusted_nodes(
    pristine: Pristine, tmp_path: Path, long_mode: bool, tally: Tally
) -> None:
    size = (pristine.folder / pristine.journal).stat().st_size
    around = {b + d for b, _ in pristine.journal_lines for d in (-1, 0, 1)} | {0, 1}
    rng = random.Random(4)
    offsets = sorted(
        o
        for o in (set(range(size + 1)) if long_mode else around | set(rng.sample(range(size), 30)))
        if 0 <= o <= size
    )
    for offset in offsets:

        def cut(folder: Path, offset: int = offset) -> None:
            path = folder / pristine.journal
            path.write_bytes(path.read_bytes()[:offset])

        outcome, work, _ = resume_copy(pristine, tmp_path / f"o{offset}", cut)
        expect_resumed(pristine, outcome, work, pristine.trusted_before(offset))
        shutil.rmtree(tmp_path / f"o{offset}")
    tally.add("damage: resumes from a torn journal", len(offsets))


def test_resume_after_journal_bit_flips_trusts_only_the_records_before_the_damage(
    pristine: Pristine, tmp_path: Path, long_mode: bool, tally: Tally
) -> None:
    raw = (pristine.folder / pristine.journal).read_bytes()
    rng = random.Random(5)
    flips = [(rng.randrange(len(raw)), rng.randrange(8)) for _ in range(400 if long_mode else 40)]
    for index, (offset, bit) in enumerate(flips):

        def flip(folder: Path, offset: int = offset, bit: int = bit) -> None:
            path = folder / pristine.journal
            damaged = bytearray(path.read_bytes())
            damaged[offset] ^= 1 << bit
            path.write_bytes(bytes(damaged))

        outcome, work, folder = resume_copy(pristine, tmp_path / f"f{index}", flip)
        # Records whose line ends before the flipped byte are intact; the damaged one and
        # everything after it must not be trusted, even records that are themselves intact.
        expect_resumed(pristine, outcome, work, pristine.trusted_before(offset))
        problems = anyio.run(WorkflowPersistenceManager(tmp_path / f"f{index}").verify)
        assert [p.path for p in problems] == [folder / pristine.journal]
        shutil.rmtree(tmp_path / f"f{index}")
    tally.add("damage: journal bit flips tried", len(flips))


# -- whole-file damage -----------------------------------------------------------------------------


def other_version(raw: bytes) -> bytes:
    """The same document as written by a future release: the next schema_version, valid checksum."""
    data = orjson.loads(raw)
    del data["checksum"]
    data["schema_version"] = SCHEMA_VERSION + 1
    body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"checksum":"sha256:' + digest.encode() + b'"}'


DAMAGE: dict[str, tuple[Any, str]] = {
    "empty": (lambda raw: b"", "empty file"),
    "garbage": (lambda raw: random.Random(6).randbytes(len(raw)), "not valid JSON"),
    "nul-bytes": (lambda raw: b"\x00" * len(raw), "not valid JSON"),
    "json-array": (lambda raw: b"[1, 2, 3]", "top level is a JSON list"),
    "other-schema": (
        lambda raw: b'{"kind": "something else", "version": 1}',
        "no integer schema_version",
    ),
    "future-version": (other_version, f"unsupported schema_version {SCHEMA_VERSION + 1}"),
    "half-of-each": (lambda raw: raw[: len(raw) // 2] + raw[len(raw) // 2 + 1 :], ""),
    "directory": (None, "is a directory"),
}


def damage_file(path: Path, kind: str) -> None:
    make, _ = DAMAGE[kind]
    if make is None:
        path.unlink()
        path.mkdir(mode=0o700)
        (path / "inside").write_bytes(b"not to be deleted")
    else:
        path.write_bytes(make(path.read_bytes()))


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_snapshot(pristine: Pristine, tmp_path: Path, kind: str) -> None:
    _, words = DAMAGE[kind]
    outcome, work, folder = resume_copy(
        pristine, tmp_path / "resume", lambda f: damage_file(f / f"{pristine.newest}.json", kind)
    )
    path = folder / f"{pristine.newest}.json"
    assert isinstance(outcome, CheckpointCorruptError), outcome
    check_error(outcome, path, words)
    assert not work.calls

    async def read() -> None:
        before = tree(folder)
        await expect_corrupt_everywhere(
            WorkflowPersistenceManager(tmp_path / "resume"), path, words
        )
        assert tree(folder) == before

    anyio.run(read)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_older_snapshot_is_reported_but_does_not_stop_a_resume(
    pristine: Pristine, tmp_path: Path, kind: str
) -> None:
    _, words = DAMAGE[kind]
    folder = pristine.copy_to(tmp_path / "read")
    path = folder / f"{pristine.older}.json"
    damage_file(path, kind)
    manager = WorkflowPersistenceManager(tmp_path / "read")

    async def read() -> None:
        before = tree(folder)
        latest = await manager.latest(PLAN_ID)
        assert latest is not None and latest.checkpoint_id == pristine.newest
        with pytest.raises(CheckpointCorruptError) as info:
            await manager.get_checkpoint(pristine.older)
        check_error(info.value, path, words)
        errors = {i.checkpoint_id: i.error for i in await manager.list_checkpoints(PLAN_ID)}
        assert errors[pristine.newest] is None and errors[pristine.older]
        assert [p.path for p in await manager.verify(PLAN_ID)] == [path]
        assert tree(folder) == before

    anyio.run(read)
    outcome, work, _ = resume_copy(
        pristine, tmp_path / "resume", lambda f: damage_file(f / f"{pristine.older}.json", kind)
    )
    expect_resumed(pristine, outcome, work, pristine.trusted_before(10**9))


JOURNAL_DAMAGE: dict[str, tuple[Any, bool]] = {
    # kind: (make bytes from the journal's bytes, whether any record stays trusted)
    "empty": (lambda raw: b"", False),
    "garbage": (lambda raw: random.Random(7).randbytes(len(raw)), False),
    "nul-bytes": (lambda raw: b"\x00" * len(raw), False),
    "garbage-appended": (lambda raw: raw + b"\x00\xff garbage without a newline", True),
    "garbage-line-appended": (lambda raw: raw + b"0000zzzz {}\n", True),
    "first-line-duplicated-without-newline": (lambda raw: raw + raw.split(b"\n")[0], True),
}


@pytest.mark.parametrize("kind", list(JOURNAL_DAMAGE))
def test_damaged_journal_is_trusted_up_to_the_damage(
    pristine: Pristine, tmp_path: Path, kind: str
) -> None:
    make, keeps = JOURNAL_DAMAGE[kind]

    def damage(folder: Path) -> None:
        path = folder / pristine.journal
        path.write_bytes(make(path.read_bytes()))

    outcome, work, _ = resume_copy(pristine, tmp_path / "resume", damage)
    trusted = pristine.trusted_before(10**9) if keeps else set()
    expect_resumed(pristine, outcome, work, trusted)


def record_line(record: dict[str, Any]) -> bytes:
    payload = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        pytest.param("directory", "is a directory", id="directory"),
        pytest.param("foreign-record", "another run or without result", id="foreign-record"),
        pytest.param("unknown-node", "unknown node", id="unknown-node"),
    ],
)
def test_journal_that_cannot_be_a_torn_tail_is_an_error(
    pristine: Pristine, tmp_path: Path, kind: str, words: str
) -> None:
    """Damage a crash cannot cause (valid records that do not fit, a folder) is not ignored."""

    def damage(folder: Path) -> None:
        path = folder / pristine.journal
        run_id = pristine.journal.removeprefix("journal-").removesuffix(".jsonl")
        if kind == "directory":
            damage_file(path, "directory")
        elif kind == "foreign-record":
            path.write_bytes(path.read_bytes() + record_line({"schema": 2, "entries": []}))
        else:
            path.write_bytes(
                path.read_bytes()
                + record_line(
                    {"run": run_id, "result": {"node_id": "n99999", "status": "completed"}}
                )
            )

    outcome, work, folder = resume_copy(pristine, tmp_path / "resume", damage)
    assert isinstance(outcome, CheckpointCorruptError), outcome
    check_error(outcome, folder / pristine.journal, words)
    assert not work.calls


def test_a_folder_damaged_in_every_file_at_once_loses_nothing_it_can_prove(
    pristine: Pristine, tmp_path: Path
) -> None:
    """Both snapshots and the journal damaged: an error, and every byte is still there."""
    folder = pristine.copy_to(tmp_path / "all")
    damage_file(folder / f"{pristine.older}.json", "garbage")
    damage_file(folder / f"{pristine.newest}.json", "future-version")
    damage_file(folder / pristine.journal, "garbage")
    before = tree(tmp_path / "all")
    manager = WorkflowPersistenceManager(tmp_path / "all")

    async def read() -> list[str]:
        with pytest.raises(CheckpointCorruptError):
            await manager.latest(PLAN_ID)
        with pytest.raises(CheckpointCorruptError):
            await planner_for(tmp_path / "all", Work()).execute_with_resume(VIBE)
        return sorted(p.path.name for p in await manager.verify())

    names = anyio.run(read)
    assert names == sorted([f"{pristine.older}.json", f"{pristine.newest}.json", pristine.journal])
    assert tree(tmp_path / "all") == before
