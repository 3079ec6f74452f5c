"""Schema evolution: frozen version-1 files keep loading; newer or foreign documents do not.

`fixtures/v1/` holds checkpoint folders written by the schema-version-1 code (copied from
`.vibe_checkpoints.example/`, which may be regenerated; these copies never are: their digests
are pinned below). The tests copy them to a temporary folder before touching anything.

Policy checked here (and written down in docs/torture.md):
- version 1 files load, list, verify and resume;
- an unknown *top-level* field (a newer minor writer adding one) with a valid checksum loads;
  the field is ignored and not carried into later checkpoints;
- an unknown field inside the vibe, the plan or a node is a `CheckpointCorruptError`
  (those models forbid extra fields); inside a node result it is ignored;
- any edit without a matching checksum is a `CheckpointCorruptError` (checksum mismatch);
- ``schema_version`` 3, the next one (or 0, or not an integer) is a `CheckpointCorruptError` that says a
  newer vibe_planner may have written it; nothing is deleted or rewritten.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.torture.support import tree
from vibe_planner import (
    CheckpointCorruptError,
    MetaPlanner,
    NodeContext,
    Vibe,
    WorkflowPersistenceManager,
)
from vibe_planner._models import SCHEMA_VERSION

FIXTURES = Path(__file__).with_name("fixtures") / "v1"
FAILED_PLAN = "release-notes-2-0"  # a custom plan whose "publish" node failed
DONE_PLAN = "vibe-9920930ee9a6b34489c05078"  # an offline plan that completed

PINNED = """
c99e645dd909a3fc  release-notes-2-0/cp-00000001-332e7a513c4e.json
5db4e368b682e74d  release-notes-2-0/cp-00000002-dd793a2f6186.json
b9f06d1b5eb3d01c  release-notes-2-0/cp-00000003-e0a3909cba6c.json
e3b0c44298fc1c14  release-notes-2-0/journal-f0114c82e23703a4.jsonl
0f36ed963056f0ef  vibe-9920930ee9a6b34489c05078/cp-00000001-89976309f2bb.json
e30ba31001cc5ea4  vibe-9920930ee9a6b34489c05078/cp-00000002-f3aa70e8af98.json
7a6003d060c5d7cd  vibe-9920930ee9a6b34489c05078/cp-00000003-15e388293baa.json
e3b0c44298fc1c14  vibe-9920930ee9a6b34489c05078/journal-019d459bd616bb50.jsonl
"""  # sha256 (first 16 hex digits), two spaces, path under fixtures/v1
FINAL = "cp-00000003-e0a3909cba6c"


def test_the_v1_fixtures_are_frozen() -> None:
    pinned = {
        path: digest for digest, path in (line.split() for line in PINNED.split("\n") if line)
    }
    found = {
        str(p.relative_to(FIXTURES)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(FIXTURES.rglob("*"))
        if p.is_file()
    }
    assert found == pinned, "fixtures/v1 must stay byte-for-byte as the version-1 code wrote them"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    target = tmp_path / "cp"
    shutil.copytree(FIXTURES, target)
    for path in target.rglob("*"):  # git does not keep the 0600/0700 modes
        path.chmod(0o700 if path.is_dir() else 0o600)
    return target


def sign(fields: dict[str, Any]) -> bytes:
    """A checkpoint document as docs/checkpoints.md describes it: the canonical JSON (sorted
    keys, no spaces) of the fields, plus ``checksum`` = ``sha256:`` of those bytes."""
    fields = {k: v for k, v in fields.items() if k != "checksum"}
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    return orjson.dumps({**fields, "checksum": checksum}, option=orjson.OPT_SORT_KEYS)


def edit(path: Path, change: Callable[[dict[str, Any]], None], *, resign: bool = True) -> None:
    document = orjson.loads(path.read_bytes())
    change(document)
    path.write_bytes(
        sign(document) if resign else orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    )


async def retry_work(ctx: NodeContext) -> str:
    return f"{ctx.node.id}: done"


def test_version_1_files_load_list_verify_and_resume(root: Path) -> None:
    manager = WorkflowPersistenceManager(root)

    async def read() -> None:
        assert await manager.verify() == []
        infos = await manager.list_checkpoints()
        assert len(infos) == 6 and all(info.error is None for info in infos)
        for info in infos:
            checkpoint = await manager.get_checkpoint(info.checkpoint_id)
            assert orjson.loads(Path(info.path).read_bytes())["schema_version"] == 1
            assert checkpoint.schema_version == SCHEMA_VERSION  # migrated as it was read
        failed = await manager.latest(FAILED_PLAN)
        assert (
            failed is not None
            and failed.checkpoint_id == FINAL
            and failed.failed_nodes == ["publish"]
        )

    anyio.run(read)
    # The failed plan resumes: only the failed node and the one it blocked run.
    ran: list[str] = []

    async def work(ctx: NodeContext) -> str:
        ran.append(ctx.node.id)
        return f"{ctx.node.id}: done"

    planner = MetaPlanner(handlers={"work": work}, persistence_manager=manager)
    result = anyio.run(planner.resume, FAILED_PLAN)
    assert result.status == "completed" and sorted(ran) == ["announce", "publish"]
    # The completed offline plan returns its stored result to the same vibe.
    vibe = Vibe(
        description="a launch blog post for our coffee brand",
        style="warm and witty",
        constraints=["under 800 words"],
    )
    assert vibe.default_plan_id() == DONE_PLAN
    stored = anyio.run(
        MetaPlanner(llm=False, persistence_manager=manager).execute_with_resume, vibe
    )
    assert stored.status == "completed" and stored.nodes_run == 0 and stored.outputs["final"]


def test_an_unknown_top_level_field_is_ignored_and_not_carried_over(root: Path) -> None:
    path = root / FAILED_PLAN / f"{FINAL}.json"
    edit(path, lambda d: d.update(added_later={"from": "a newer writer", "n": [1, 2]}))
    manager = WorkflowPersistenceManager(root)
    checkpoint = anyio.run(manager.latest, FAILED_PLAN)
    assert checkpoint is not None and checkpoint.checkpoint_id == FINAL
    assert "added_later" not in checkpoint.model_dump()
    assert anyio.run(manager.verify) == []

    planner = MetaPlanner(handlers={"work": retry_work}, persistence_manager=manager)
    result = anyio.run(planner.resume, FAILED_PLAN)
    assert result.status == "completed"
    newest = sorted((root / FAILED_PLAN).glob("cp-*.json"))[-1]
    assert "added_later" not in orjson.loads(newest.read_bytes())
    assert b"added_later" in path.read_bytes(), "the old file is left as it was"


@pytest.mark.parametrize(
    ("where", "change", "loads"),
    [
        pytest.param(
            "node result",
            lambda d: d["node_results"]["notes"].update(extra=1),
            True,
            id="node-result",
        ),
        pytest.param("usage", lambda d: d["usage"].update(cached_tokens=3), True, id="usage"),
        pytest.param("vibe", lambda d: d["vibe"].update(mood="calm"), False, id="vibe"),
        pytest.param("plan", lambda d: d["workflow_plan"].update(version=2), False, id="plan"),
        pytest.param(
            "node", lambda d: d["workflow_plan"]["nodes"][0].update(cost=1), False, id="node"
        ),
    ],
)
def test_unknown_nested_fields(
    root: Path, where: str, change: Callable[[dict[str, Any]], None], loads: bool
) -> None:
    path = root / FAILED_PLAN / f"{FINAL}.json"
    edit(path, change)
    manager = WorkflowPersistenceManager(root)
    if loads:
        checkpoint = anyio.run(manager.latest, FAILED_PLAN)
        assert checkpoint is not None
        return
    with pytest.raises(CheckpointCorruptError) as info:
        anyio.run(manager.latest, FAILED_PLAN)
    assert info.value.path == path and "schema" in info.value.reason


def test_any_edit_without_a_new_checksum_is_corrupt(root: Path) -> None:
    path = root / FAILED_PLAN / f"{FINAL}.json"
    edit(path, lambda d: d.update(added_later=True), resign=False)
    with pytest.raises(CheckpointCorruptError) as info:
        anyio.run(WorkflowPersistenceManager(root).latest, FAILED_PLAN)
    assert "checksum mismatch" in info.value.reason


@pytest.mark.parametrize(
    ("version", "words"),
    [
        pytest.param(SCHEMA_VERSION + 1, f"unsupported schema_version {SCHEMA_VERSION + 1}",
                     id="next-version"),
        pytest.param(1000, "unsupported schema_version 1000", id="v1000"),
        pytest.param(0, "unsupported schema_version 0", id="v0"),
        pytest.param("2", "no integer schema_version", id="string"),
        pytest.param(2.0, "no integer schema_version", id="float"),
        pytest.param(None, "no integer schema_version", id="null"),
    ],
)
def test_other_schema_versions_are_a_clear_error_and_nothing_is_touched(
    root: Path, version: Any, words: str
) -> None:
    path = root / FAILED_PLAN / f"{FINAL}.json"
    edit(path, lambda d: d.update(schema_version=version))
    before = tree(root)
    manager = WorkflowPersistenceManager(root)
    planner = MetaPlanner(handlers={"work": retry_work}, persistence_manager=manager)

    async def read() -> None:
        for call in (
            lambda: manager.latest(FAILED_PLAN),
            lambda: manager.get_checkpoint(FINAL),
            lambda: planner.resume(FAILED_PLAN),
            lambda: planner.execute_with_resume("release notes for 2.0", plan_id=FAILED_PLAN),
        ):
            with pytest.raises(CheckpointCorruptError) as info:
                await call()
            assert info.value.path == path and words in info.value.reason, info.value.reason
        if words.startswith(f"unsupported schema_version {SCHEMA_VERSION + 1}"):
            assert "newer vibe_planner" in info.value.reason
        errors = {i.checkpoint_id: i.error for i in await manager.list_checkpoints(FAILED_PLAN)}
        assert errors[FINAL] and words in errors[FINAL]
        assert [p.path for p in await manager.verify()] == [path]

    anyio.run(read)
    after = tree(root)
    # The attempts to run took the plan's lock, which creates its (empty) lock file.
    assert after.pop(f"{FAILED_PLAN}/.lock", ("file", b"", 0o600)) == ("file", b"", 0o600)
    assert after == before


def test_a_future_version_in_an_older_file_does_not_block_the_latest(root: Path) -> None:
    path = root / FAILED_PLAN / "cp-00000001-332e7a513c4e.json"
    edit(path, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    manager = WorkflowPersistenceManager(root)
    latest = anyio.run(manager.latest, FAILED_PLAN)
    assert latest is not None and latest.checkpoint_id == FINAL
    assert [p.path for p in anyio.run(manager.verify)] == [path]
