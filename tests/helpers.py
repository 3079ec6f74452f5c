"""Shared test helpers: hand-built plans and a planner that returns them."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from vibe_planner import Vibe, WorkflowNode, WorkflowPlan


class StaticPlanner:
    """A planner returning a fixed list of nodes for any vibe (counts its calls)."""

    name = "static"

    def __init__(self, nodes: Sequence[WorkflowNode]) -> None:
        self.nodes = list(nodes)
        self.calls = 0

    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        self.calls += 1
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=self.nodes,
                            planner=self.name)


def node(node_id: str, *deps: str, kind: str = "work", **params: object) -> WorkflowNode:
    return WorkflowNode(id=node_id, kind=kind, depends_on=list(deps), parameters=dict(params))


def random_dag(size: int, seed: int, *, kind: str = "work", max_deps: int = 3) -> list[WorkflowNode]:
    """A seeded random DAG: node i depends on up to *max_deps* earlier nodes."""
    rng = random.Random(seed)
    nodes = []
    for i in range(size):
        count = rng.randint(0, min(i, max_deps))
        deps = sorted(rng.sample(range(i), count))
        nodes.append(WorkflowNode(id=f"n{i:05d}", kind=kind, depends_on=[f"n{d:05d}" for d in deps]))
    return nodes


def allow_bodies(allow_file: Path, count: int) -> None:
    """Let a `tests/crash_worker.py` process run its first *count* node bodies (see ALLOW_FILE)."""
    temporary = allow_file.with_name(allow_file.name + ".tmp")
    temporary.write_text(str(count))
    os.replace(temporary, allow_file)


def completed_in_chain(folder: Path, document: dict[str, object]) -> set[str]:
    """Nodes completed as of a checkpoint *document* of *folder*, read as docs/checkpoints.md
    says, without the library: a base lists them; a delta adds to its parent's those its journal
    range names (journaled results are completed ones) and those of its own results."""
    import orjson

    done: set[str] = set()
    chain = [document]
    while chain[-1].get("kind") == "delta":
        parent = orjson.loads((folder / f"{chain[-1]['parent']}.json").read_bytes())
        chain.append(parent)
    done.update(chain[-1]["completed_nodes"])  # type: ignore[arg-type]
    for delta in reversed(chain[:-1]):
        journal = delta["journal"]
        if journal:
            done.update(journal["nodes"])  # type: ignore[index]
        for node_id, result in delta["node_results"].items():  # type: ignore[attr-defined]
            (done.add if result["status"] == "completed" else done.discard)(node_id)
    return done
