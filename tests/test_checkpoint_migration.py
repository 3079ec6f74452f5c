"""Version-1 checkpoints written before incremental checkpoints existed keep loading and resuming.

`tests/fixtures/checkpoints-v1/` was written by the code of commit 3b06cb7 (schema version 1,
`examples/make_checkpoint_examples.py` pointed at that folder) and is never regenerated: it is
what users' folders hold today.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from vibe_planner import MetaPlanner, NodeContext, TokenUsage, WorkflowPersistenceManager

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoints-v1"


def private_copy(destination: Path) -> Path:
    """Copy the fixture owner-only (a checkout's modes follow its umask; the store refuses 0775)."""
    shutil.copytree(FIXTURE, destination)
    for path in [destination, *destination.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    return destination


def test_the_fixture_is_version_1() -> None:
    files = sorted(FIXTURE.glob("*/cp-*.json"))
    assert len(files) == 6
    assert {orjson.loads(path.read_bytes())["schema_version"] for path in files} == {1}


async def test_version_1_files_verify_list_and_load(tmp_path: Path) -> None:
    manager = WorkflowPersistenceManager(private_copy(tmp_path / "cp"))
    assert await manager.verify() == []
    infos = await manager.list_checkpoints()
    assert len(infos) == 6 and all(info.error is None for info in infos)
    for info in infos:
        checkpoint = await manager.get_checkpoint(info.checkpoint_id)
        raw = orjson.loads(Path(info.path).read_bytes())
        assert checkpoint.checkpoint_id == raw["checkpoint_id"] == info.checkpoint_id
        assert checkpoint.completed_nodes == raw["completed_nodes"]
        assert checkpoint.pending_nodes == raw["pending_nodes"]
        assert checkpoint.failed_nodes == raw["failed_nodes"]
        assert sorted(checkpoint.node_results) == sorted(raw["node_results"])
        assert info.completed_nodes == len(raw["completed_nodes"])
        assert info.total_nodes == len(raw["workflow_plan"]["nodes"])
    failed = await manager.latest("release-notes-2-0")
    assert failed is not None and failed.failed_nodes == ["publish"]
    assert failed.node_results["announce"].status == "skipped"
    assert failed.node_results["notes"].output == "notes: done"


async def test_a_version_1_plan_resumes_and_its_files_stay_as_they_were(tmp_path: Path) -> None:
    folder = private_copy(tmp_path / "cp")
    before = {path: path.read_bytes() for path in folder.rglob("cp-*.json")}
    ran: list[str] = []

    async def work(context: NodeContext) -> str:
        ran.append(context.node.id)
        context.add_usage(TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2, requests=1))
        return f"{context.node.id}: done"

    manager = WorkflowPersistenceManager(folder)
    planner = MetaPlanner(handlers={"work": work}, persistence_manager=manager)
    result = await planner.resume("release-notes-2-0")
    assert result.status == "completed" and sorted(ran) == ["announce", "publish"]
    assert result.usage.requests == 4
    assert {path: path.read_bytes() for path in before} == before  # nothing rewritten
    # The old files and the new ones read side by side; the new run is the plan's latest.
    assert await manager.verify() == []
    latest = await manager.latest("release-notes-2-0")
    assert latest is not None and latest.failed_nodes == [] and latest.sequence > 3
    for info in await manager.list_checkpoints("release-notes-2-0"):
        await manager.get_checkpoint(info.checkpoint_id)
