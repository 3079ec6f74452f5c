"""The systems under test: vibe_planner in three durability modes and the peers people pick.

Each system is a *family* (which library) and a *variant* (how it checkpoints). Its adapter
module exposes ``open_runner(workload, variant, env)``, an async context manager yielding a
`Runner` (see `base`). Every peer is paired with the vibe_planner mode that does comparable
work, and the report gives the peer's figures as ratios to that mode, rep by rep.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SYSTEMS", "System", "by_name", "not_applicable"]


@dataclass(frozen=True)
class System:
    """One system under test."""

    name: str
    family: str
    variant: str
    module: str
    requires: tuple[str, ...]
    """Modules that must import for the system to be available."""
    baseline: str
    """The vibe_planner system its ratios are taken against."""
    checkpoints: bool
    """Whether it writes checkpoints at all."""
    durable: bool
    """Whether its checkpoints survive SIGKILL (so it can resume)."""
    label: str


_VP = ("vibe_planner",)
_LG = ("langgraph.graph", "langgraph.checkpoint.memory")
_AIGC = ("vibe_aigc.executor", "vibe_aigc.persistence")

SYSTEMS: tuple[System, ...] = (
    System("vibe_planner/none", "vibe_planner", "none", "bench.systems.vp", _VP,
           "vibe_planner/none", False, False, 'MetaPlanner(durability="none")'),
    System("vibe_planner/interval", "vibe_planner", "interval", "bench.systems.vp", _VP,
           "vibe_planner/interval", True, True,
           'MetaPlanner(durability="interval", checkpoint_interval=5)'),
    System("vibe_planner/journal", "vibe_planner", "journal", "bench.systems.vp", _VP,
           "vibe_planner/journal", True, True,
           'MetaPlanner(checkpoint_interval=5), journal on (the default)'),
    System("langgraph/none", "langgraph", "none", "bench.systems.lg", _LG,
           "vibe_planner/none", False, False, "StateGraph, no checkpointer"),
    System("langgraph/memory", "langgraph", "memory", "bench.systems.lg", _LG,
           "vibe_planner/interval", True, False, "StateGraph + InMemorySaver"),
    System("langgraph/sqlite", "langgraph", "sqlite", "bench.systems.lg",
           (*_LG, "langgraph.checkpoint.sqlite.aio", "aiosqlite"),
           "vibe_planner/journal", True, True, "StateGraph + AsyncSqliteSaver"),
    System("vibe-aigc/none", "vibe-aigc", "none", "bench.systems.aigc", _AIGC,
           "vibe_planner/none", False, False, "WorkflowExecutor(checkpoint_interval=None)"),
    System("vibe-aigc/interval", "vibe-aigc", "interval", "bench.systems.aigc", _AIGC,
           "vibe_planner/interval", True, True, "WorkflowExecutor(checkpoint_interval=5)"),
)


def by_name(name: str) -> System:
    """Return the system called *name*."""
    for system in SYSTEMS:
        if system.name == name:
            return system
    raise KeyError(f"unknown system {name!r}; known: {[s.name for s in SYSTEMS]}")


def not_applicable(system: System, workload_key: str) -> str | None:
    """Why *system* does not run workload *workload_key* (``None``: it does)."""
    if workload_key == "resume" and not system.checkpoints:
        return "writes no checkpoints, so it cannot resume"
    if workload_key == "resume" and not system.durable:
        return "in-memory checkpoints do not survive SIGKILL"
    return None
