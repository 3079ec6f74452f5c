"""Regenerate `.vibe_checkpoints.example/` with files written by the current code.

    python examples/make_checkpoint_examples.py

Writes two plans: the offline plan of a blog-post vibe, run to completion, and a small plan
whose `publish` node failed (so `failed_nodes`, an error and a skipped node show up).
`tests/test_example_checkpoints.py` checks that every file there still loads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from vibe_planner import (
    MetaPlanner,
    NodeContext,
    NodeError,
    TokenUsage,
    Vibe,
    WorkflowNode,
    WorkflowPersistenceManager,
    WorkflowPlan,
)

TARGET = Path(__file__).resolve().parent.parent / ".vibe_checkpoints.example"


class ReleasePlanner:
    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        nodes = [
            WorkflowNode(id="changelog", kind="work", instructions="Collect merged changes."),
            WorkflowNode(id="notes", kind="work", depends_on=["changelog"],
                         instructions="Write the release notes."),
            WorkflowNode(id="publish", kind="work", depends_on=["notes"],
                         instructions="Publish to the blog."),
            WorkflowNode(id="announce", kind="work", depends_on=["publish"],
                         instructions="Announce on social media."),
        ]
        return WorkflowPlan(plan_id="release-notes-2-0", vibe=vibe, nodes=nodes, planner="custom")


async def work(context: NodeContext) -> str:
    if context.node.id == "publish":
        raise NodeError("blog API answered 503", retryable=False)
    context.add_usage(TokenUsage(prompt_tokens=120, completion_tokens=80, total_tokens=200, requests=1))
    return f"{context.node.id}: done"


async def main() -> None:
    shutil.rmtree(TARGET, ignore_errors=True)
    manager = WorkflowPersistenceManager(TARGET)
    offline = MetaPlanner(persistence_manager=manager, checkpoint_interval=4)
    await offline.execute(Vibe(description="a launch blog post for our coffee brand",
                               style="warm and witty", constraints=["under 800 words"]))
    failing = MetaPlanner(planner=ReleasePlanner(), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=2)
    await failing.execute(Vibe(description="release notes for 2.0"),
                          plan_id="release-notes-2-0", metadata={"requested_by": "docs example"})
    for lock in TARGET.glob("*/.lock"):
        lock.unlink()


if __name__ == "__main__":
    anyio.run(main)
