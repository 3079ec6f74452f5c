"""Planners: turn a vibe into a `WorkflowPlan`."""

from ._base import Planner as Planner
from ._llm import LLMPlanner as LLMPlanner
from ._offline import OfflinePlanner as OfflinePlanner

__all__ = ["LLMPlanner", "OfflinePlanner", "Planner"]
