"""The five workloads: seeded DAGs that every system runs identically.

A workload is pure data (node ids, dependencies, latencies, output size), regenerated from
``(key, size, seed)`` in every process, so the parent and each child agree on it without
passing it around. Node bodies are ``anyio.sleep(latency)`` (a latency of 0 returns at once).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "FULL_SIZES", "FULL_SWEEPS", "KEYS", "QUICK_SIZES", "QUICK_SWEEPS", "NodeSpec", "Workload",
    "make_workload", "result_key",
]

KEYS = ("fanout", "uneven", "overhead", "checkpoint", "resume", "slow")
"""Workload keys, in the order they run and are reported."""

FULL_SIZES = {"fanout": 100, "uneven": 200, "overhead": 10_000, "checkpoint": 1_000, "resume": 10_000,
              "slow": 1_000}
QUICK_SIZES = {"fanout": 20, "uneven": 40, "overhead": 500, "checkpoint": 100, "resume": 500,
               "slow": 20}
FULL_SWEEPS = {"slow": (1_000, 2_000, 4_000, 8_000)}
"""Workloads run at several sizes in one run (their results are keyed ``<key>-<size>``)."""
QUICK_SWEEPS = {"slow": (20, 40)}

TITLES = {
    "fanout": "1. Fan-out: independent 10 ms nodes",
    "uneven": "2. Uneven DAG: random dependencies, log-normal latencies around 20 ms",
    "overhead": "3. Overhead: no-op nodes, checkpoint every 5",
    "checkpoint": "4. Checkpoint cost: 1 KB outputs, checkpoint every 5",
    "resume": "5. Resume after SIGKILL half way",
    "slow": "6. Slow nodes: 1 KB outputs after 20 ms, concurrency 10, checkpoint every 5",
}


def result_key(key: str, size: int, sweeps: dict[str, tuple[int, ...]]) -> str:
    """The key of a workload's results: the workload key, plus ``-<size>`` for a sweep."""
    return f"{key}-{size}" if key in sweeps else key


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: its id, the ids it depends on, and how long its body sleeps (seconds)."""

    id: str
    deps: tuple[str, ...]
    latency: float


@dataclass(frozen=True)
class Workload:
    """A seeded DAG plus how every system must run it."""

    key: str
    seed: int
    nodes: tuple[NodeSpec, ...]
    output_bytes: int = 0
    """Size of each node's output (a string); 0: the output is the node id."""
    interval: int = 5
    """Checkpoint every this many finished nodes, where a system takes a count."""
    concurrency: int = 100
    """Most nodes running at once, where a system takes a limit."""
    probe: bool = False
    """Run the event-loop lag probe alongside (workload 4)."""

    @cached_property
    def plan_bytes(self) -> int:
        """Bytes of the DAG alone as compact JSON (ids and dependencies; no system's own fields).

        What any system must store to describe the plan, at least: the denominator of the
        slow-nodes workload's "bytes written ÷ (outputs + plan)" counts this and the outputs.
        """
        return len(json.dumps([{"id": n.id, "deps": list(n.deps)} for n in self.nodes],
                              separators=(",", ":")))

    @property
    def size(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    @property
    def title(self) -> str:
        """Human title for reports."""
        return TITLES[self.key]

    @cached_property
    def critical_path(self) -> float:
        """The longest chain of latencies: the wall time with unlimited concurrency, zero overhead."""
        finish: dict[str, float] = {}
        for node in self.nodes:  # nodes are in topological order by construction
            finish[node.id] = node.latency + max((finish[d] for d in node.deps), default=0.0)
        return max(finish.values(), default=0.0)

    def critical_chain(self) -> list[float]:
        """The latencies along one longest chain, first node first."""
        finish: dict[str, float] = {}
        before: dict[str, str | None] = {}
        for node in self.nodes:
            prev = max(node.deps, key=finish.__getitem__, default=None)
            before[node.id] = prev
            finish[node.id] = node.latency + (finish[prev] if prev is not None else 0.0)
        latency = {node.id: node.latency for node in self.nodes}
        chain, at = [], max(finish, key=finish.__getitem__, default=None)
        while at is not None:
            chain.append(latency[at])
            at = before[at]
        return chain[::-1]

    @cached_property
    def depth(self) -> int:
        """Number of nodes on the longest dependency chain."""
        level: dict[str, int] = {}
        for node in self.nodes:
            level[node.id] = 1 + max((level[d] for d in node.deps), default=0)
        return max(level.values(), default=0)

    def describe(self) -> dict[str, object]:
        """A JSON summary of the workload for the results files."""
        return {
            "key": self.key, "title": self.title, "size": self.size, "seed": self.seed,
            "edges": sum(len(n.deps) for n in self.nodes), "depth": self.depth,
            "critical_path_s": round(self.critical_path, 6),
            "total_latency_s": round(sum(n.latency for n in self.nodes), 6),
            "output_bytes": self.output_bytes, "checkpoint_interval": self.interval,
            "concurrency": self.concurrency, "plan_bytes": self.plan_bytes,
        }


def make_workload(key: str, size: int, seed: int = 1) -> Workload:
    """Build workload *key* with *size* nodes from *seed* (same inputs, same DAG)."""
    rng = random.Random(f"{key}:{size}:{seed}")
    if key == "fanout":
        nodes = tuple(NodeSpec(_node_id(i), (), 0.010) for i in range(size))
        return Workload(key, seed, nodes, concurrency=max(100, size))
    if key == "uneven":
        # Log-normal with a median of 20 ms; clipped so one outlier cannot dominate.
        def latency() -> float:
            return min(0.2, max(0.002, rng.lognormvariate(math.log(0.020), 0.5)))

        return Workload(key, seed, _random_dag(size, rng, latency), concurrency=max(100, size))
    if key == "overhead":
        return Workload(key, seed, _random_dag(size, rng, lambda: 0.0), concurrency=100)
    if key == "checkpoint":
        return Workload(key, seed, _random_dag(size, rng, lambda: 0.010), output_bytes=1024,
                        concurrency=100, probe=True)
    if key == "resume":
        return Workload(key, seed, _random_dag(size, rng, lambda: 0.005), concurrency=32)
    if key == "slow":
        # Nodes as slow as LLM calls would be (scaled down): every interval snapshot is written.
        return Workload(key, seed, _random_dag(size, rng, lambda: 0.020), output_bytes=1024,
                        concurrency=10)
    raise ValueError(f"unknown workload {key!r}; expected one of {KEYS}")


def _node_id(index: int) -> str:
    return f"n{index:05d}"


def _random_dag(
    size: int, rng: random.Random, latency: Callable[[], float]
) -> tuple[NodeSpec, ...]:
    """Node *i* depends on 0 to 3 nodes drawn uniformly from the nodes before it."""
    nodes = []
    for i in range(size):
        count = rng.randint(0, min(i, 3))
        deps = tuple(_node_id(d) for d in sorted(rng.sample(range(i), count)))
        nodes.append(NodeSpec(_node_id(i), deps, latency()))
    return tuple(nodes)
