"""A plan runner meant to be SIGKILLed: every node body appends its id to a side-effect log.

Usage: python tests/crash_worker.py CHECKPOINT_DIR LOG_PATH SIZE SEED [DELAY] [INTERVAL] [DURABILITY]
                                    [ALLOW_FILE]

It runs `execute_with_resume` on a seeded random DAG, so running it again after a kill resumes.
Node outputs are a pure function of the node id and its inputs, so a run that was killed and
resumed must end with the same outputs as one that never crashed. Prints the final outputs'
digest as the last line of stdout.

With ALLOW_FILE, node bodies wait for their turn: the file holds a number N (write it atomically),
and only the first N node bodies of this process run; the others wait until the file allows
more. A test can then be sure the run is still going when it kills or disturbs it, whatever the
machine's load, instead of hoping it acts before the run ends.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import StaticPlanner, random_dag
from vibe_planner import MetaPlanner, NodeContext, Vibe, WorkflowPersistenceManager


def main() -> None:
    checkpoint_dir, log_path, size, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.002
    interval = int(sys.argv[6]) if len(sys.argv) > 6 else 5
    durability = sys.argv[7] if len(sys.argv) > 7 else "journal"
    allow_file = Path(sys.argv[8]) if len(sys.argv) > 8 else None
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    started = 0

    async def wait_for_turn() -> None:
        nonlocal started
        started += 1
        turn = started
        # The file is written by another process: there is no event to await.
        while allow_file is not None and turn > int(allow_file.read_text()):  # noqa: ASYNC110
            await anyio.sleep(0.002)

    async def work(ctx: NodeContext) -> str:
        await wait_for_turn()
        await anyio.sleep(delay)
        # The side effect: a line per execution, written before the node reports completion.
        log.write(f"{ctx.node.id}\n".encode())
        digest = hashlib.sha256(orjson.dumps([ctx.node.id, ctx.inputs], option=orjson.OPT_SORT_KEYS))
        return digest.hexdigest()[:16]

    planner = MetaPlanner(
        planner=StaticPlanner(random_dag(size, seed)),
        handlers={"work": work},
        # CRASH_WORKER_BASE_RATIO=0: every snapshot whole (a test that needs snapshots to grow).
        persistence_manager=WorkflowPersistenceManager(
            checkpoint_dir, base_ratio=float(os.environ.get("CRASH_WORKER_BASE_RATIO", "3"))),
        checkpoint_interval=interval,
        durability=durability,  # type: ignore[arg-type]
        max_concurrency=8,
    )
    result = anyio.run(planner.execute_with_resume, Vibe(description=f"crash test {size} {seed}"))
    outputs = {k: r.output for k, r in result.node_results.items()}
    print(result.status, result.nodes_run, result.nodes_restored)
    print(hashlib.sha256(orjson.dumps(outputs, option=orjson.OPT_SORT_KEYS)).hexdigest())
    os.fsync(log.fileno())


if __name__ == "__main__":
    main()
