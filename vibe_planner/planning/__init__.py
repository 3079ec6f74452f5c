"""Planners: turn a vibe into a `WorkflowPlan`."""

from ._base import Planner as Planner
from ._offline import OfflinePlanner as OfflinePlanner

__all__ = ["OfflinePlanner", "Planner"]
