"""Built-in node handlers that need no network: ``noop``, ``approval``, the offline ``llm`` stand-in.

The offline ``llm`` handler lives beside the offline planner (`vibe_planner.planning`).
"""

from __future__ import annotations

from typing import Any

from ..planning._offline import offline_llm_handler
from ._context import Handler, NodeContext
from ._input import approval_handler

__all__ = ["default_handlers", "noop_handler"]


async def noop_handler(context: NodeContext) -> Any:
    """Do nothing and return ``None`` (for structure-only nodes and benchmarks)."""
    return None


def default_handlers() -> dict[str, Handler]:
    """Return the built-in handlers by kind (``llm`` offline, ``noop``, ``approval``)."""
    return {"llm": offline_llm_handler, "noop": noop_handler, "approval": approval_handler}
