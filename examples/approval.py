"""A press release that legal must approve: run until it waits, approve from another process, resume.

    python examples/approval.py [CHECKPOINT_DIR]

1. The offline planner sees the constraint "must be approved by legal before publishing" and
   puts an ``approval`` node before the final step. The run does everything else, then ends
   with status ``waiting``: nothing is held in memory, the process could exit here.
2. Another process answers: ``vibe-planner approve PLAN approval:1`` (run here as
   ``python -m vibe_planner.cli``), which records the answer atomically in a new checkpoint.
3. The same `execute_with_resume` call continues: the approval node gets its answer, the final
   step runs, and nothing that completed before runs again.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

import anyio

from vibe_planner import MetaPlanner, Vibe, WorkflowPersistenceManager

VIBE = Vibe(
    description="a press release for our new single-origin coffee",
    style="confident, warm",
    constraints=["must be approved by legal before publishing", "under 300 words"],
)


def main(checkpoint_dir: str) -> None:
    planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(checkpoint_dir))

    first = anyio.run(planner.execute_with_resume, VIBE)
    print(f"1. run: {first.status}, {first.nodes_run} nodes run")
    for request in first.pending_requests:
        print(f"   waiting for {request.id}: {request.prompt}")
    assert first.status == "waiting"

    request = first.pending_requests[0]
    command = [sys.executable, "-m", "vibe_planner.cli", "approve", first.plan_id, request.id,
               "--comment", "cleared by legal", "--checkpoint-dir", checkpoint_dir]
    answered = subprocess.run(command, capture_output=True, text=True, check=True)
    print(f"2. another process: {answered.stdout.splitlines()[0]}")

    final = anyio.run(planner.execute_with_resume, VIBE)
    print(f"3. resume: {final.status}, {final.nodes_run} nodes run, "
          f"{final.nodes_restored} restored (not run again)")
    print(f"   approval output: {final.node_results['approval'].output}")
    print(f"   final output starts: {final.outputs['final'].splitlines()[0]}")
    assert final.status == "completed"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(folder + "/checkpoints")
