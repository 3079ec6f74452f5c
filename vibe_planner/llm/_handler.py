"""The ``llm`` node handler: one chat request per node, with its dependencies' results."""

from __future__ import annotations

from typing import Any

import orjson

from .._exceptions import NodeError
from ..execution._context import NodeContext
from ._session import LLMSession

__all__ = ["LLMNodeHandler"]


class LLMNodeHandler:
    """Runs ``llm`` nodes through an `LLMSession`.

    The prompt carries the vibe, the node's instructions and its dependencies' outputs. A node
    with ``parameters={"output": "json"}`` gets JSON mode and returns the parsed JSON value;
    other nodes return the reply text. Token usage is recorded on the node.
    """

    def __init__(self, session: LLMSession) -> None:
        self.session = session

    async def __call__(self, context: NodeContext) -> Any:
        """Run one node."""
        wants_json = context.node.parameters.get("output") == "json"
        reply = await self.session.chat(
            _messages(context, wants_json),
            response_format={"type": "json_object"} if wants_json else None,
        )
        context.add_usage(reply.usage)
        if not wants_json:
            return reply.text
        try:
            return orjson.loads(reply.text)
        except orjson.JSONDecodeError as exc:
            raise NodeError(f"node {context.node.id!r} asked for JSON but got: {exc}") from None


def _messages(context: NodeContext, wants_json: bool) -> list[dict[str, Any]]:
    vibe = context.vibe
    system = [
        "You carry out one step of a larger piece of work.",
        f"Overall goal: {vibe.description}",
    ]
    if vibe.style:
        system.append(f"Style: {vibe.style}")
    system += [f"Constraint: {c}" for c in vibe.constraints]
    system.append("Reply with a JSON value only." if wants_json else
                  "Reply with this step's result only, no preamble.")
    user = [f"Step {context.node.id!r}: {context.node.instructions}"]
    for dep, output in context.inputs.items():
        text = output if isinstance(output, str) else orjson.dumps(output).decode()
        user.append(f"\n### Result of step {dep!r}\n{text}")
    return [{"role": "system", "content": "\n".join(system)},
            {"role": "user", "content": "\n".join(user)}]
