"""`.vibe_checkpoints.example/` holds real files written by the code; they must keep loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from vibe_planner import MetaPlanner, NodeContext, TokenUsage, WorkflowPersistenceManager
from vibe_planner._models import SCHEMA_VERSION

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parent.parent / ".vibe_checkpoints.example"


def private_copy(destination: Path) -> Path:
    """Copy the examples, owner-only: a checkout's modes follow its umask (0775 under umask 002),
    and the store refuses folders that others may write to."""
    shutil.copytree(EXAMPLES, destination)
    for path in [destination, *destination.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    return destination


async def test_every_example_file_verifies_and_loads(tmp_path: Path) -> None:
    manager = WorkflowPersistenceManager(private_copy(tmp_path / "cp"))
    assert await manager.verify() == []
    infos = await manager.list_checkpoints()
    assert len(infos) >= 4 and all(info.error is None for info in infos)
    reasons, kinds = set(), set()
    for info in infos:
        checkpoint = await manager.get_checkpoint(info.checkpoint_id)
        assert checkpoint.schema_version == SCHEMA_VERSION
        assert orjson.loads(Path(info.path).read_bytes())["schema_version"] == SCHEMA_VERSION
        reasons.add(checkpoint.reason)
        kinds.add(checkpoint.kind)
        assert info.completed_nodes == len(checkpoint.completed_nodes)
    assert {"planned", "final"} <= reasons
    assert kinds == {"base", "delta"}  # both kinds of file, as docs/checkpoints.md describes
    failed = await manager.latest("release-notes-2-0")
    assert failed is not None and failed.failed_nodes == ["publish"]
    assert failed.node_results["announce"].status == "skipped"


async def test_the_failed_example_plan_resumes_from_its_files(tmp_path: Path) -> None:
    private_copy(tmp_path / "cp")
    ran: list[str] = []

    async def work(context: NodeContext) -> str:
        ran.append(context.node.id)
        context.add_usage(TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2, requests=1))
        return f"{context.node.id}: done"

    planner = MetaPlanner(handlers={"work": work},
                          persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"))
    result = await planner.resume("release-notes-2-0")
    assert result.status == "completed"
    assert sorted(ran) == ["announce", "publish"]
    assert result.usage.requests == 4  # two from the stored run, two now
    assert not result.offline  # a custom plan with custom handlers
