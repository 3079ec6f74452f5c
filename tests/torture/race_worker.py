"""A plan runner for the lock races: waits at a barrier, then calls `execute_with_resume`.

Usage: python -m tests.torture.race_worker CHECKPOINT_DIR LOG_PATH SIZE SEED DELAY GO_AT
                                           [LOCKED_OUT_DIR RIVALS]

Every process of a race runs the same seeded plan as `tests/crash_worker.py` (same vibe, same
outputs), waits until the wall clock reaches GO_AT (seconds since the epoch) so that all of
them call `execute_with_resume` within a millisecond or so, and prints one JSON line: the
outcome (``ran``, ``stored`` or ``locked``), with the lock holder named by the error when
locked out. Each node body appends
``<node id> <pid>`` to LOG_PATH, so the test can tell which process ran what.

With LOCKED_OUT_DIR and RIVALS, a racer locked out leaves a file named by its pid in
LOCKED_OUT_DIR, and the node bodies of the one that got the lock wait until RIVALS racers did:
a racer that comes late on a loaded machine still finds the plan locked, never finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.helpers import StaticPlanner, random_dag
from vibe_planner import MetaPlanner, NodeContext, PlanLockedError, Vibe, WorkflowPersistenceManager


def main() -> None:
    checkpoint_dir, log_path = sys.argv[1], sys.argv[2]
    size, seed, delay, go_at = (
        int(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5]),
        float(sys.argv[6]),
    )
    locked_out = Path(sys.argv[7]) if len(sys.argv) > 8 else None
    rivals = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    pid = os.getpid()

    async def wait_for_rivals() -> None:
        # Files written by other processes: there is no event to await.
        while locked_out is not None and len(os.listdir(locked_out)) < rivals:  # noqa: ASYNC110
            await anyio.sleep(0.002)

    async def work(ctx: NodeContext) -> str:
        await wait_for_rivals()
        await anyio.sleep(delay)
        log.write(f"{ctx.node.id} {pid}\n".encode())
        digest = hashlib.sha256(
            orjson.dumps([ctx.node.id, ctx.inputs], option=orjson.OPT_SORT_KEYS)
        )
        return digest.hexdigest()[:16]

    planner = MetaPlanner(
        planner=StaticPlanner(random_dag(size, seed)),
        handlers={"work": work},
        persistence_manager=WorkflowPersistenceManager(checkpoint_dir),
        checkpoint_interval=5,
        max_concurrency=8,
    )
    if go_at - time.time() > 60:
        raise SystemExit("GO_AT is more than a minute away")
    while time.time() < go_at:
        time.sleep(0.0002)
    vibe = Vibe(description=f"crash test {size} {seed}")
    try:
        result = anyio.run(planner.execute_with_resume, vibe)
    except PlanLockedError as exc:
        if locked_out is not None:
            (locked_out / str(pid)).touch()
        report = {"outcome": "locked", "pid": pid, "holder": exc.holder, "message": str(exc)}
    else:
        outputs = {k: r.output for k, r in result.node_results.items()}
        report = {
            "outcome": "ran" if result.nodes_run else "stored",
            "pid": pid,
            "status": result.status,
            "nodes_run": result.nodes_run,
            "run_id": result.run_id,
            "digest": hashlib.sha256(
                orjson.dumps(outputs, option=orjson.OPT_SORT_KEYS)
            ).hexdigest(),
        }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
