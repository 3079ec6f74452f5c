"""The `Planner` protocol: anything with ``async plan(vibe) -> WorkflowPlan``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._models import Vibe, WorkflowPlan

__all__ = ["Planner"]


@runtime_checkable
class Planner(Protocol):
    """Breaks a vibe into a plan.

    Implementations should use ``vibe.default_plan_id()`` as the plan id (the `MetaPlanner`
    replaces it when the caller passes ``plan_id=``). Apps and tests can pass any object with
    this method, e.g. one returning a hand-built plan.
    """

    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        """Return a validated plan for *vibe*."""
        ...
