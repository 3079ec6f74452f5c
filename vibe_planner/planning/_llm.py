"""`LLMPlanner`: asks the model for a JSON plan, validates it, and asks for repairs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson

from .._exceptions import InvalidIdentifierError, PlanningError, PlanValidationError
from .._ids import check_node_id
from .._models import TokenUsage, Vibe, WorkflowPlan
from ..llm._config import LLMConfig, StructuredOutput
from ..llm._session import LLMRequestError, LLMSession, RateLimiter
from ._steps import SCHEMA_MAX_STEPS, StepProblems, quote_value, steps_schema, steps_to_nodes

__all__ = ["LLMPlanner", "plan_reply_schema", "repair_request"]

logger = logging.getLogger("vibe_planner.llm")
MAX_REPLY_CHARS = 2_000_000
_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.S)
_NODE_KEYS = frozenset({"id", "kind", "instructions", "depends_on", "parameters"})

_SYSTEM = """You are a planner. Break the user's request into a few steps that other model
calls will carry out, one call per step. Steps that do not need each other run in parallel.

Reply with a JSON object only, like this example for "a short blog post about tea":
{{"steps": [
 {{"step": 1, "title": "Outline", "instructions": "List the three sections.", "after": []}},
 {{"step": 2, "title": "History", "instructions": "Write the section on tea's history.", "after": [1]}},
 {{"step": 3, "title": "Brewing", "instructions": "Write the section on brewing tea.", "after": [1]}},
 {{"step": 4, "title": "Final post", "instructions": "Join the sections into the post.", "after": [2, 3]}}
]}}

Rules:
- "step": 1, 2, 3, ... in order.
- "title": a few words (letters, digits, spaces); every title different.{kind_rule}
- "instructions": what this step must produce, in one or two sentences.
- "after": the numbers of EARLIER steps whose results this step needs; [] for none.
- 3 to {typical} steps (at most {max_steps}). The last step produces the deliverable.{extra}"""

_KIND_RULE = """
- "kind": one of {kinds}. Use "llm" unless a step clearly needs one of the others."""

_APPROVAL_RULE = """
- "approval" steps wait for a person: use one only where the request or a constraint asks for a
  human review or sign-off ("must be approved by legal", "review before publishing"), placed after
  the steps producing what must be approved and before the steps that may only run once it is
  (publishing, sending). Its "instructions" are the question put to the reviewer."""


def plan_reply_schema(kinds: Iterable[str] = ("llm",), max_steps: int = SCHEMA_MAX_STEPS) -> dict[str, Any]:
    """Return the JSON schema the planner asks the model to follow (see `planning._steps`)."""
    return steps_schema(sorted(set(kinds)), max_steps)


class LLMPlanner:
    """Plans with an LLM over the OpenAI API; see `LLMConfig` for the knobs.

    Args:
        config: Endpoint, model, retries and repair budget.
        kinds: Node kinds the plan may use (those with a handler).
        rate_limiter: Shared with the runs' sessions so ``requests_per_minute`` is global.

    """

    name = "llm"

    def __init__(
        self, config: LLMConfig, kinds: Iterable[str] = ("llm",),
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self.kinds = sorted(set(kinds))
        self.rate_limiter = rate_limiter or RateLimiter(config.requests_per_minute)
        self._mode: StructuredOutput = config.structured_output

    async def plan(self, vibe: Vibe) -> WorkflowPlan:
        """Return a validated plan for *vibe*, or raise `PlanningError` with the last reply."""
        async with LLMSession(self.config, self.rate_limiter) as session:
            return await self._plan(session, vibe)

    async def _plan(self, session: LLMSession, vibe: Vibe) -> WorkflowPlan:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system_prompt()},
            {"role": "user", "content": _describe(vibe)},
        ]
        usage, errors, reply_text = TokenUsage(), [], None
        for _ in range(self.config.max_repair_attempts + 1):
            reply = await self._ask(session, messages)
            usage, reply_text = usage + reply.usage, reply.text
            try:
                plan = self.parse(reply.text, vibe, truncated=reply.finish_reason == "length")
            except PlanValidationError as exc:
                errors.append("; ".join(exc.problems))
                logger.info("plan rejected (%s); asking for a repair", errors[-1])
                messages += [
                    {"role": "assistant", "content": reply.text[:20_000]},
                    {"role": "user", "content": repair_request(exc.problems)},
                ]
                continue
            return plan.model_copy(update={"usage": usage})
        raise PlanningError(
            f"the model gave no valid plan in {len(errors)} attempts",
            last_reply=reply_text, errors=errors)

    async def _ask(self, session: LLMSession, messages: list[dict[str, Any]]) -> Any:
        while True:
            try:
                return await session.chat(messages, response_format=self._response_format())
            except LLMRequestError as exc:
                # Servers without structured outputs answer 400: fall back one mode and retry.
                if exc.status_code != 400 or not self._downgrade():
                    raise PlanningError(str(exc)) from exc
                logger.info("endpoint refused the response format; falling back to %s", self._mode)

    def parse(self, text: str, vibe: Vibe, *, truncated: bool = False) -> WorkflowPlan:
        """Turn a reply into a plan, or raise `PlanValidationError` saying what to fix.

        The reply is ``{"steps": [...]}`` (the format asked for, see `planning._steps`) or,
        from models that were told another format, ``{"nodes": [...]}`` with ids and
        ``depends_on``. Either way `WorkflowPlan` validation is the last gate.
        """
        if len(text) > MAX_REPLY_CHARS:
            raise PlanValidationError([f"the reply has {len(text)} characters; too large"])
        try:
            data = orjson.loads(_strip_fences(text))
        except orjson.JSONDecodeError as exc:
            if truncated:
                limit = self.config.max_tokens
                raise PlanValidationError([
                    f"the reply was cut off at the max_tokens limit ({limit} tokens) before the "
                    "JSON ended: use fewer steps and shorter instructions"]) from None
            raise PlanValidationError([f"the reply is not valid JSON ({exc})"]) from None
        if isinstance(data, list):
            data = {"steps" if any(isinstance(n, dict) and "title" in n for n in data) else "nodes": data}
        if isinstance(data, dict) and "steps" in data:
            try:
                nodes = steps_to_nodes(data["steps"], self.kinds, self.config.max_plan_nodes)
            except StepProblems as exc:
                raise PlanValidationError(exc.problems) from None
        elif isinstance(data, dict) and isinstance(data.get("nodes"), list):
            nodes = self._legacy_nodes(data["nodes"])
        else:
            raise PlanValidationError(['the reply must be a JSON object with a "steps" array'])
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=nodes,
                            planner=self.name, model=self.config.model)

    def _legacy_nodes(self, nodes: list[Any]) -> list[Any]:
        """Check a ``{"nodes": [...]}`` reply, quoting bad values; the DAG check comes after."""
        if len(nodes) > self.config.max_plan_nodes:
            raise PlanValidationError(
                [f"the plan has {len(nodes)} steps; at most {self.config.max_plan_nodes} allowed"])
        bad_kinds = sorted({str(n.get("kind")) for n in nodes
                            if isinstance(n, dict) and n.get("kind", "llm") not in self.kinds})
        if bad_kinds:
            raise PlanValidationError([f"unknown kind(s) {bad_kinds}; use one of {self.kinds}"])
        problems = []
        for index, node in enumerate(nodes, start=1):
            node_id = node.get("id") if isinstance(node, dict) else None
            try:
                check_node_id(node_id)
            except InvalidIdentifierError as exc:
                problems.append(f"node {index} has \"id\": {quote_value(node_id)}, which {exc.reason}: "
                                "change only that id (and the depends_on lists naming it)")
        if problems:
            raise PlanValidationError(problems[:20])
        # Models like to add fields ("name", "description"); keep the ones a node has.
        return [{k: v for k, v in n.items() if k in _NODE_KEYS} if isinstance(n, dict) else n
                for n in nodes]

    def _system_prompt(self) -> str:
        kind_rule = _KIND_RULE.format(kinds=self.kinds) if len(self.kinds) > 1 else ""
        extra = _APPROVAL_RULE if "approval" in self.kinds else ""
        max_steps = min(self.config.max_plan_nodes, SCHEMA_MAX_STEPS) \
            if self._mode in ("auto", "json_schema") else self.config.max_plan_nodes
        return _SYSTEM.format(kind_rule=kind_rule, max_steps=max_steps, typical=min(max_steps, 8),
                              extra=extra)

    def _response_format(self) -> dict[str, Any] | None:
        if self._mode in ("auto", "json_schema"):
            return {"type": "json_schema", "json_schema": {
                "name": "workflow_plan", "schema": plan_reply_schema(self.kinds, self.config.max_plan_nodes),
                "strict": False}}
        if self._mode == "json_object":
            return {"type": "json_object"}
        return None

    def _downgrade(self) -> bool:
        if self._mode == "auto":
            self._mode = "json_object"
            return True
        if self._mode == "json_object" and self.config.structured_output == "auto":
            self._mode = "none"
            return True
        return False


def repair_request(problems: list[str]) -> str:
    """Return the repair message: each problem (quoting the values at fault), smallest change."""
    listed = "\n".join(f"- {problem}" for problem in problems[:20])
    return (f"That plan cannot be used:\n{listed}\nChange only what these lines name, keep "
            "every other step exactly as it was, and reply with the whole corrected JSON object.")


def _describe(vibe: Vibe) -> str:
    lines = [f"Request: {vibe.description}"]
    if vibe.style:
        lines.append(f"Style: {vibe.style}")
    lines += [f"Constraint: {c}" for c in vibe.constraints]
    return "\n".join(lines)


def _strip_fences(text: str) -> str:
    """Return the JSON part of a reply: a fenced block's body, or the outermost object."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        return stripped
    fence = _FENCE.search(stripped)
    if fence is not None:
        return fence.group(1)
    start, end = stripped.find("{"), stripped.rfind("}")
    return stripped[start : end + 1] if 0 <= start < end else stripped
