"""A plan with two approvals on different branches, run by real processes that tests may SIGKILL.

Usage:
    python tests/hitl_worker.py run CHECKPOINT_DIR LOG_PATH [ALLOW_FILE]
    python tests/hitl_worker.py cli ARG...     (the ``vibe-planner`` command line, same exit codes)

``run`` calls `execute_with_resume` on the plan below (a fresh run or a resume) and prints the
status and the pending request ids. Every node body that completes (work nodes, and approval
nodes once approved) first appends its id to LOG_PATH: the side effect a test checks is never
repeated for a recorded node. Work outputs are a pure function of the node id and its inputs
(`expected_output`), so a test can check every output of the final checkpoint.

With ALLOW_FILE, work bodies wait for their turn as in `tests/crash_worker.py`: the file holds
a number N and only the first N work bodies of this process run, so a test can be sure the run
is still going when it kills it.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import StaticPlanner
from vibe_planner import MetaPlanner, NodeContext, Vibe, WorkflowNode, WorkflowPersistenceManager
from vibe_planner.cli._app import main as cli_main
from vibe_planner.execution._input import approval_handler

VIBE = Vibe(description="a press release approved by legal and by the brand team")
PLAN_ID = VIBE.default_plan_id()
FILLERS = [f"filler-{i}" for i in range(1, 13)]
APPROVALS = ["legal", "brand"]


def nodes() -> list[WorkflowNode]:
    """The plan: two approval branches and an independent one, joined by ``publish``."""
    plan = [WorkflowNode(id="draft", kind="work")]
    for team in APPROVALS:
        plan += [
            WorkflowNode(id=f"{team}-prep", kind="work", depends_on=["draft"]),
            WorkflowNode(id=team, kind="approval", depends_on=[f"{team}-prep"],
                         instructions=f"Does {team} approve the draft?"),
            WorkflowNode(id=f"{team}-done", kind="work", depends_on=[team]),
        ]
    plan += [WorkflowNode(id=filler, kind="work", depends_on=["draft"]) for filler in FILLERS]
    plan.append(WorkflowNode(id="publish", kind="work",
                             depends_on=[*(f"{t}-done" for t in APPROVALS), *FILLERS]))
    return plan


def expected_output(node_id: str, inputs: dict[str, Any]) -> str:
    """What a work node returns for these inputs."""
    digest = hashlib.sha256(orjson.dumps([node_id, inputs], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]


def run(checkpoint_dir: str, log_path: str, allow_file: Path | None) -> None:
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
        await anyio.sleep(0.002)
        log.write(f"{ctx.node.id}\n".encode())
        return expected_output(ctx.node.id, ctx.inputs)

    async def approval(ctx: NodeContext) -> Any:
        answer = await approval_handler(ctx)
        log.write(f"{ctx.node.id}\n".encode())
        return answer

    planner = MetaPlanner(
        planner=StaticPlanner(nodes()), handlers={"work": work, "approval": approval},
        persistence_manager=WorkflowPersistenceManager(checkpoint_dir), checkpoint_interval=3,
        max_concurrency=4,
    )
    result = anyio.run(planner.execute_with_resume, VIBE)
    print(result.status, *[r.id for r in result.pending_requests])


def main() -> None:
    if sys.argv[1] == "cli":
        raise SystemExit(cli_main(sys.argv[2:]))
    allow = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    run(sys.argv[2], sys.argv[3], allow)


if __name__ == "__main__":
    main()
