"""The embedded default planner: a sensible DAG from the vibe's own words, with no LLM."""

from __future__ import annotations

import re

from .._models import Vibe, WorkflowNode, WorkflowPlan
from ..execution._context import NodeContext

__all__ = ["OfflinePlanner", "asks_for_review", "offline_llm_handler"]

_REVIEW = re.compile(
    r"\b(approv\w*|sign[- ]?off|signed[- ]off|review(ed)? (by|before)|must be reviewed|human review"
    r"|needs? (a )?review|before (it is |it's )?(published|publishing|sent|release[ds]?))\b",
    re.IGNORECASE,
)


def asks_for_review(constraint: str) -> bool:
    """Whether a constraint asks for a person's approval ("must be approved", "review before ...")."""
    return _REVIEW.search(constraint) is not None


class OfflinePlanner:
    """Plans without a network, from the vibe's own words.

    The plan: brief, audience, voice, one check per constraint, an outline, sections drafted
    in parallel, then assembly, a constraint review and a final polish. When a constraint asks
    for a person's review ("must be approved by legal", "review before publishing", see
    `asks_for_review`), an ``approval`` node waits for that person before the final polish.

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
        ]
        final_deps = ["assemble", "review"]
        reviews = [c for c in vibe.constraints if asks_for_review(c)]
        if reviews:
            final_deps.append("approval")
            nodes.append(WorkflowNode(
                id="approval", kind="approval", depends_on=["assemble", "review"],
                instructions=f"Approve the assembled draft before the final version ({'; '.join(reviews)})"))
        nodes.append(WorkflowNode(id="final", depends_on=final_deps, parameters={"combine": True},
                                  instructions="Polish the draft into the final deliverable."))
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=nodes, planner=self.name)


async def offline_llm_handler(context: NodeContext) -> str:
    """Stand in for an LLM: a deterministic text from the node's instructions and inputs.

    Nodes with ``parameters["combine"]`` join their text inputs (in dependency order) after it;
    other inputs (an approval's answer, say) are data, not text to join.
    """
    node = context.node
    text = f"[offline:{node.id}] {node.instructions}".rstrip()
    if node.parameters.get("combine"):
        parts = [value for dep in node.depends_on if isinstance(value := context.inputs[dep], str)]
        text = "\n\n".join([text, *parts])
    return text
