"""Built-in node handlers that need no network: the offline ``llm`` stand-in and ``noop``."""

from __future__ import annotations

from typing import Any

from ._context import Handler, NodeContext

__all__ = ["default_handlers", "noop_handler", "offline_llm_handler"]


async def offline_llm_handler(context: NodeContext) -> str:
    """Stand in for an LLM: a deterministic text from the node's instructions and inputs.

    Nodes with ``parameters["combine"]`` join their inputs (in dependency order) after it.
    """
    node = context.node
    text = f"[offline:{node.id}] {node.instructions}".rstrip()
    if node.parameters.get("combine"):
        parts = [str(context.inputs[dep]) for dep in node.depends_on]
        text = "\n\n".join([text, *parts])
    return text


async def noop_handler(context: NodeContext) -> Any:
    """Do nothing and return ``None`` (for structure-only nodes and benchmarks)."""
    return None


def default_handlers() -> dict[str, Handler]:
    """Return the built-in handlers by kind (``llm`` offline, ``noop``)."""
    return {"llm": offline_llm_handler, "noop": noop_handler}
