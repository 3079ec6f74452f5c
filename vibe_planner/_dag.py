"""DAG validation: unique ids, known dependencies, no cycles, bounded size.

The validator reports every problem it finds (not just the first) and names the nodes
involved, because its message is also what the LLM planner sends back for a repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._exceptions import PlanValidationError

__all__ = ["DEFAULT_MAX_NODES", "MAX_DEPENDENCIES", "NodeLike", "topological_order"]

DEFAULT_MAX_NODES = 20_000
"""Largest plan accepted by default; bigger plans are almost surely a planner gone wrong."""
MAX_DEPENDENCIES = 1_000
"""Most dependencies one node may list."""


class NodeLike(Protocol):
    """What the validator needs of a node."""

    @property
    def id(self) -> str: ...

    @property
    def depends_on(self) -> Sequence[str]: ...


def topological_order(
    nodes: Sequence[NodeLike], *, max_nodes: int = DEFAULT_MAX_NODES
) -> list[str]:
    """Return the node ids in a dependency-respecting order, or raise `PlanValidationError`."""
    if not nodes:
        raise PlanValidationError(["the plan has no nodes"])
    if len(nodes) > max_nodes:
        raise PlanValidationError([f"the plan has {len(nodes)} nodes, more than {max_nodes}"])
    _check_ids_and_edges(nodes)
    return _kahn(nodes)


def _check_ids_and_edges(nodes: Sequence[NodeLike]) -> None:
    # Written for plans of thousands of nodes: the common (valid) case stays in C-level set
    # operations, and the problems are worked out only when something is wrong.
    problems: list[str] = []
    culprits: list[str] = []
    ids = [node.id for node in nodes]
    seen = set(ids)
    if len(seen) != len(ids):
        counted: set[str] = set()
        for node_id in ids:
            if node_id in counted:
                problems.append(f"duplicate node id {node_id!r}")
                culprits.append(node_id)
            counted.add(node_id)
    for node in nodes:
        deps = node.depends_on
        if not deps:
            continue
        if len(deps) > MAX_DEPENDENCIES:
            problems.append(f"node {node.id!r} has {len(deps)} dependencies (max {MAX_DEPENDENCIES})")
            culprits.append(node.id)
        if node.id in deps or not seen.issuperset(deps):
            for dep in deps:
                if dep == node.id:
                    problems.append(f"node {node.id!r} depends on itself")
                    culprits.append(node.id)
                elif dep not in seen:
                    problems.append(f"node {node.id!r} depends on unknown node {dep!r}")
                    culprits.append(node.id)
        if len(deps) > 1 and len(set(deps)) != len(deps):
            problems.append(f"node {node.id!r} lists a dependency twice")
            culprits.append(node.id)
    if problems:
        raise PlanValidationError(problems[:50] + _more(len(problems) - 50), culprits)


def _more(count: int) -> list[str]:
    return [f"... and {count} more problems"] if count > 0 else []


def _kahn(nodes: Sequence[NodeLike]) -> list[str]:
    order: list[str] = []  # nodes without dependencies first, in plan order
    waiting: dict[str, int] = {}
    dependents: dict[str, list[str]] = {}
    for node in nodes:
        deps = node.depends_on
        if not deps:
            order.append(node.id)
            continue
        waiting[node.id] = len(deps)
        for dep in deps:
            children = dependents.get(dep)
            if children is None:
                dependents[dep] = [node.id]
            else:
                children.append(node.id)
    for node_id in order:  # grows while it is walked: each node is appended once it is ready
        for child in dependents.get(node_id, ()):
            left = waiting[child] - 1
            waiting[child] = left
            if not left:
                order.append(child)
    if len(order) != len(nodes):
        cycle = _find_cycle({n.id: list(n.depends_on) for n in nodes if waiting.get(n.id, 0) > 0})
        raise PlanValidationError(
            [f"dependency cycle: {' -> '.join([*cycle, cycle[0]])}"], sorted(cycle)
        )
    return order


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """Return one cycle of *graph*, which holds only nodes left over by Kahn's algorithm.

    Every leftover node has at least one leftover dependency, so walking dependencies from
    any of them must revisit a node; the walk from that node back to itself is the cycle.
    """
    start = min(graph)
    path: list[str] = []
    position: dict[str, int] = {}
    node = start
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = min(dep for dep in graph[node] if dep in graph)
    return list(reversed(path[position[node] :]))
