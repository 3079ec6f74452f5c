"""The embedded default planner: a sensible DAG from the vibe's own words, with no LLM."""

from __future__ import annotations

from .._models import Vibe, WorkflowNode, WorkflowPlan
from ..execution._context import NodeContext

__all__ = ["OfflinePlanner", "offline_llm_handler"]


class OfflinePlanner:
    """Plans without a network, from the vibe's own words.

    The plan: brief, audience, voice, one check per constraint, an outline, sections drafted
    in parallel, then assembly, a constraint review and a final polish.

    Example:
        >>> import anyio
        >>> plan = anyio.run(OfflinePlanner().plan, Vibe(description="a haiku about tea"))
        >>> plan.order[0], plan.order[-1]
        ('brief', 'final')

    """

    name = "offline"

    def __init__(self, sections: int = 3) -> None:
        if not 1 <= sections <= 50:
            raise ValueError(f"sections must be within 1..50, got {sections}")
        self.sections = sections

    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        """Return the offline plan for *vibe*."""
        nodes = [
            WorkflowNode(id="brief", instructions=f"Restate the goal in one paragraph: {vibe.description}"),
            WorkflowNode(id="audience", instructions="Describe who this is for and what they need.",
                         depends_on=["brief"]),
            WorkflowNode(id="voice", depends_on=["brief"],
                         instructions=f"Define the voice and tone: {vibe.style or 'clear, friendly'}"),
        ]
        checks = []
        for index, constraint in enumerate(vibe.constraints, start=1):
            checks.append(f"constraint-{index}")
            nodes.append(WorkflowNode(id=f"constraint-{index}", depends_on=["brief"],
                                      instructions=f"Plan how to satisfy: {constraint}"))
        nodes.append(WorkflowNode(id="outline", depends_on=["audience", "voice", *checks],
                                  instructions=f"Outline {self.sections} sections."))
        sections = [f"section-{i}" for i in range(1, self.sections + 1)]
        for i, section in enumerate(sections, start=1):
            nodes.append(WorkflowNode(id=section, depends_on=["outline", "voice"],
                                      instructions=f"Draft section {i} of the outline."))
        nodes += [
            WorkflowNode(id="assemble", depends_on=sections, parameters={"combine": True},
                         instructions="Assemble the sections in order."),
            WorkflowNode(id="review", depends_on=["assemble", *checks],
                         instructions="Check the draft against every constraint."),
            WorkflowNode(id="final", depends_on=["assemble", "review"], parameters={"combine": True},
                         instructions="Polish the draft into the final deliverable."),
        ]
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=nodes, planner=self.name)


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
