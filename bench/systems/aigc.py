"""vibe-aigc 0.7.1: its `WorkflowExecutor` driven with a hand-built plan and its own checkpoints.

Every DAG node becomes a root `WorkflowNode` whose ``dependencies`` name its DAG dependencies;
the executor's handlers (one per node type) are all replaced by the workload's body. The
executor groups nodes into topological levels and runs each level with ``asyncio.gather``
(no concurrency limit exists). With ``checkpoint_interval`` set it writes a whole-run JSON
checkpoint every N completed nodes, synchronously, on the event loop: the time of each write
is measured directly (``on_loop_checkpoint_*``).

Resume uses its own API: load a checkpoint with its `WorkflowPersistenceManager` and pass it
to ``execute_plan(plan, resume_from_checkpoint=...)``. The newest checkpoint is found by file
time (vibe-aigc's ``list_checkpoints`` would parse every file first); if the newest one does
not load (a write cut by the kill), the next newest is used and ``fallbacks`` counts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vibe_aigc.executor import ExecutionStatus, WorkflowExecutor
from vibe_aigc.models import Vibe, WorkflowNode, WorkflowNodeType, WorkflowPlan
from vibe_aigc.persistence import WorkflowCheckpoint, WorkflowPersistenceManager

from ..measure import OnLoopTimer, folder_stats
from ..workloads import Workload
from .base import RunEnv

__all__ = ["open_runner"]


def build_plan(workload: Workload) -> WorkflowPlan:
    """Return *workload* as a flat vibe-aigc plan (every node a root with dependencies)."""
    nodes = [
        WorkflowNode(id=n.id, type=WorkflowNodeType.GENERATE, description=n.id,
                     dependencies=list(n.deps))
        for n in workload.nodes
    ]
    vibe = Vibe(description=f"bench {workload.key} n={workload.size} seed={workload.seed}")
    return WorkflowPlan(id=f"bench-{workload.key}", source_vibe=vibe, root_nodes=nodes)


class _Runner:
    def __init__(self, workload: Workload, variant: str, env: RunEnv) -> None:
        self._workload, self._env = workload, env
        self._folder = env.workdir / "checkpoints"
        self.plan = build_plan(workload)
        self.executor = WorkflowExecutor(
            checkpoint_interval=workload.interval if variant == "interval" else None,
            checkpoint_dir=str(self._folder),
        )
        body = env.body

        async def handler(node: WorkflowNode) -> str:
            return await body(node.id)

        self.executor.node_handlers = dict.fromkeys(WorkflowNodeType, handler)
        self.timer = OnLoopTimer()
        self.executor._create_checkpoint = self.timer.wrap(
            self.executor._create_checkpoint)
        self.fallbacks = 0

    def _latest(self) -> WorkflowCheckpoint | None:
        files = sorted(self._folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        manager = WorkflowPersistenceManager(str(self._folder))
        for index, path in enumerate(files):
            try:
                checkpoint = manager.load_checkpoint(Path(path).stem)
            except RuntimeError:
                continue
            self.fallbacks = index
            return checkpoint
        return None

    async def run(self) -> dict[str, Any]:
        checkpoint = self._latest() if self._env.resume else None
        plan = checkpoint.plan if checkpoint is not None else self.plan
        result = await self.executor.execute_plan(plan, resume_from_checkpoint=checkpoint)
        completed = sum(1 for r in result.node_results.values()
                        if r.status == ExecutionStatus.COMPLETED)
        return {"status": result.status.value, "completed": completed,
                "checkpoints": self.timer.calls, "fallbacks": self.fallbacks}

    async def recorded(self) -> set[str]:
        checkpoint = self._latest()
        if checkpoint is None:
            return set()
        results = checkpoint.execution_result.node_results
        return {k for k, r in results.items() if r.status == ExecutionStatus.COMPLETED}

    def stats(self) -> dict[str, Any]:
        files = folder_stats(self._folder, ".json")
        return {"cp_files": files["files"], "cp_bytes": files["bytes"], "cp_largest": files["largest"],
                **self.timer.results("on_loop_checkpoint")}


@contextlib.asynccontextmanager
async def open_runner(workload: Workload, variant: str, env: RunEnv) -> AsyncIterator[_Runner]:
    """Yield a runner of *workload* on vibe-aigc's executor, checkpointing per *variant*."""
    if variant not in ("none", "interval"):
        raise ValueError(f"unknown vibe-aigc variant {variant!r}")
    yield _Runner(workload, variant, env)
