"""A benchmark worker process: ``VIBE_PLANNER_STORE=URL python -m bench.scale.worker SCHEMA ...``.

Every vibe is planned as a chain of ``--nodes`` nodes whose handler does nothing or sleeps
``--node-ms`` milliseconds; prints ``ready`` once it handles SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

from vibe_planner import (
    MetaPlanner,
    NodeContext,
    PostgresCheckpointStore,
    Vibe,
    Worker,
    WorkflowNode,
    WorkflowPersistenceManager,
    WorkflowPlan,
)


class ChainPlanner:
    """Plans every vibe as the same chain of nodes (planning is not what is measured)."""

    name = "bench"

    def __init__(self, size: int) -> None:
        self.nodes = [WorkflowNode(id=f"n{i:04d}", kind="work", depends_on=[f"n{i - 1:04d}"] if i else [])
                      for i in range(size)]

    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=self.nodes, planner=self.name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("schema")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--node-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    store = PostgresCheckpointStore(os.environ["VIBE_PLANNER_STORE"], schema=args.schema,
                                    lease_ttl=args.lease_ttl, max_connections=args.concurrency + 2)
    delay = args.node_ms / 1000

    async def work(ctx: NodeContext) -> str:
        if delay:
            await anyio.sleep(delay)
        return ctx.node.id

    planner = MetaPlanner(planner=ChainPlanner(args.nodes), handlers={"work": work}, checkpoint_interval=5,
                          persistence_manager=WorkflowPersistenceManager(store=store))
    worker = Worker(planner, concurrency=args.concurrency, poll_interval=args.poll_interval)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(worker.serve)
            print("ready", file=sys.stderr, flush=True)

    try:
        anyio.run(serve)
    finally:
        store.close()


if __name__ == "__main__":
    main()
