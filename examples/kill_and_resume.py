"""Kill a 30-node plan with SIGKILL half way, resume it, and show what was not run again.

    python examples/kill_and_resume.py [CHECKPOINT_DIR]

The parent starts a child process running the plan, waits until about half the nodes have
completed, kills the child with SIGKILL (no cleanup at all), then resumes the plan itself with
the same `execute_with_resume` call and prints which nodes were restored and which ran.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from vibe_planner import (
    MetaPlanner,
    NodeContext,
    Vibe,
    WorkflowNode,
    WorkflowPersistenceManager,
    WorkflowPlan,
)

VIBE = Vibe(description="a 30-step research digest", style="crisp")
LAYERS = 6  # 6 layers x 5 nodes; each node depends on two nodes of the layer before


class ThirtyNodePlanner:
    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        nodes = []
        for layer in range(LAYERS):
            for i in range(5):
                deps = [] if layer == 0 else [f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 1) % 5}"]
                nodes.append(WorkflowNode(id=f"L{layer}-{i}", kind="step", depends_on=deps))
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=nodes)


def make_planner(checkpoint_dir: Path, log: Path) -> MetaPlanner:
    async def step(context: NodeContext) -> str:
        await anyio.sleep(0.05)
        with log.open("a") as file:  # the node's side effect, to show what really ran
            file.write(context.node.id + "\n")
        return f"{context.node.id} <- {sorted(context.inputs)}"

    return MetaPlanner(planner=ThirtyNodePlanner(), handlers={"step": step}, max_concurrency=4,
                       persistence_manager=WorkflowPersistenceManager(checkpoint_dir),
                       checkpoint_interval=5)


def child(checkpoint_dir: Path, log: Path) -> None:
    anyio.run(make_planner(checkpoint_dir, log).execute_with_resume, VIBE)


def main() -> None:
    checkpoint_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "cp"
    log = checkpoint_dir.parent / "ran.log"
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(checkpoint_dir), str(log)])
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text().splitlines()) < 15:
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit("the child did not make progress")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ran_before = log.read_text().splitlines()
    print(f"killed the run with SIGKILL after {len(ran_before)} of 30 nodes had run")
    log.write_text("")

    result = anyio.run(make_planner(checkpoint_dir, log).execute_with_resume, VIBE)
    ran_after = log.read_text().splitlines()
    skipped = sorted(set(ran_before) - set(ran_after))
    print(f"resumed from {result.resumed_from}: {result.status}")
    print(f"skipped {len(skipped)} completed nodes: {' '.join(skipped)}")
    print(f"ran {len(ran_after)} nodes: {' '.join(sorted(ran_after))}")
    again = sorted(set(ran_before) & set(ran_after))
    print(f"ran again (were running at the kill): {' '.join(again) or 'none'}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
