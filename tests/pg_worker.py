"""A worker process for the worker tests: `Worker.serve` on a PostgreSQL store, with a plan of
N nodes for every vibe and a handler that leaves a trace of each node it runs.

    VIBE_PLANNER_STORE=URL python tests/pg_worker.py SCHEMA [--nodes N] [--concurrency C] [--lease-ttl S]
        [--poll-interval S] [--node-seconds S]

Each node run inserts a row into ``<schema>.node_runs`` (plan, node, pid, lease token,
``recorded``, ``current``): ``recorded`` says whether the store already held the node's
completion when the node started, and ``current`` whether the run still held its lease after
looking. A recorded node must never run again: no row may have both (a process paused past its
lease may run nodes before it learns it was fenced off: those rows are not ``current``). The
tests create that table (`NODE_RUNS`). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import StaticPlanner, random_dag
from vibe_planner import (
    MetaPlanner,
    NodeContext,
    PostgresCheckpointStore,
    Worker,
    WorkflowPersistenceManager,
)

NODE_RUNS = """CREATE TABLE IF NOT EXISTS {s}.node_runs (
    id bigserial PRIMARY KEY, plan_id text NOT NULL, node_id text NOT NULL, pid integer NOT NULL,
    token bigint NOT NULL, recorded boolean NOT NULL, current boolean NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("schema")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--node-seconds", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s pid={os.getpid()} %(name)s %(levelname)s %(message)s")
    store = PostgresCheckpointStore(os.environ["VIBE_PLANNER_STORE"], schema=args.schema,
                                    lease_ttl=args.lease_ttl)
    manager = WorkflowPersistenceManager(store=store)
    pid = os.getpid()

    async def work(ctx: NodeContext) -> str:
        lease = manager.held_lease(ctx.plan_id)
        assert lease is not None
        restored = await manager.restore(ctx.plan_id)
        recorded = restored is not None and (
            ctx.node.id in restored.checkpoint.completed_nodes
            or any(r["node_id"] == ctx.node.id for r in restored.journal_records))
        # "current": the lease is still this run's after the look, so it was all along (a
        # token, once replaced, never comes back): the look saw everything recorded so far.
        await store.run(
            f"INSERT INTO {store.schema}.node_runs (plan_id, node_id, pid, token, recorded, current) "
            f"VALUES (%s, %s, %s, %s, %s, EXISTS (SELECT 1 FROM {store.schema}.vp_leases "
            "WHERE plan_id = %s AND token = %s))",
            [ctx.plan_id, ctx.node.id, pid, lease.token, recorded, ctx.plan_id, lease.token])
        if args.node_seconds:
            await anyio.sleep(args.node_seconds)  # the node's work
        return f"{ctx.node.id} by {pid}"

    planner = MetaPlanner(planner=StaticPlanner(random_dag(args.nodes, seed=16)), handlers={"work": work},
                          persistence_manager=manager, checkpoint_interval=5, max_concurrency=4)
    worker = Worker(planner, concurrency=args.concurrency, poll_interval=args.poll_interval,
                    name=f"test-worker-{pid}")

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(worker.serve)
            print(f"worker {worker.name} ready", file=sys.stderr, flush=True)

    try:
        anyio.run(serve)
    finally:
        store.close()
    print(f"worker {worker.name} stopped cleanly", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
