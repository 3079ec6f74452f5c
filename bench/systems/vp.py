"""vibe_planner: a prebuilt `WorkflowPlan` run by `MetaPlanner` with a benchmark handler."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from vibe_planner import (
    MetaPlanner,
    NodeContext,
    Vibe,
    WorkflowNode,
    WorkflowPersistenceManager,
    WorkflowPlan,
)

from ..measure import folder_stats
from ..workloads import Workload
from .base import RunEnv

__all__ = ["open_runner"]


class _Prebuilt:
    """A planner returning a plan built beforehand (planning is not what is measured)."""

    name = "bench"

    def __init__(self, plan: WorkflowPlan) -> None:
        self._plan = plan

    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        return self._plan


class _Runner:
    def __init__(self, workload: Workload, variant: str, env: RunEnv) -> None:
        self._folder = env.workdir / "checkpoints"
        self.vibe = Vibe(description=f"bench {workload.key} n={workload.size} seed={workload.seed}")
        nodes = [WorkflowNode(id=n.id, kind="bench", depends_on=list(n.deps)) for n in workload.nodes]
        plan = WorkflowPlan(plan_id=self.vibe.default_plan_id(), vibe=self.vibe, nodes=nodes,
                            planner=_Prebuilt.name)
        self.plan_id = plan.plan_id
        body = env.body

        async def handler(context: NodeContext) -> str:
            return await body(context.node.id)

        self.planner = MetaPlanner(
            llm=False, planner=_Prebuilt(plan), handlers={"bench": handler},
            persistence_manager=WorkflowPersistenceManager(self._folder),
            checkpoint_interval=workload.interval, durability=variant,  # type: ignore[arg-type]
            max_concurrency=workload.concurrency, node_timeout=None,
        )

    async def run(self) -> dict[str, Any]:
        result = await self.planner.execute_with_resume(self.vibe)
        completed = sum(1 for r in result.node_results.values() if r.status == "completed")
        return {"status": result.status, "completed": completed,
                "checkpoints": len(result.checkpoints_written), "nodes_restored": result.nodes_restored}

    async def recorded(self) -> set[str]:
        # A manager of its own, so the timed resume starts with nothing cached.
        restored = await WorkflowPersistenceManager(self._folder).restore(self.plan_id)
        if restored is None:
            return set()
        journal = {record["node_id"] for record in restored.journal_records}
        return set(restored.checkpoint.completed_nodes) | journal

    def stats(self) -> dict[str, Any]:
        snapshots = folder_stats(self._folder, ".json")
        journals = folder_stats(self._folder, ".jsonl")
        return {"cp_files": snapshots["files"], "cp_bytes": snapshots["bytes"] + journals["bytes"],
                "cp_largest": snapshots["largest"]}


@contextlib.asynccontextmanager
async def open_runner(workload: Workload, variant: str, env: RunEnv) -> AsyncIterator[_Runner]:
    """Yield a runner of *workload* on vibe_planner with durability *variant*."""
    yield _Runner(workload, variant, env)
