"""`LLMPlanner`: asks the model for a JSON plan, validates it, and asks for repairs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson
import pydantic

from .._exceptions import PlanningError, PlanValidationError
from .._models import TokenUsage, Vibe, WorkflowPlan
from ..llm._config import LLMConfig, StructuredOutput
from ..llm._session import LLMRequestError, LLMSession, RateLimiter

__all__ = ["LLMPlanner", "plan_reply_schema"]

logger = logging.getLogger("vibe_planner.llm")
MAX_REPLY_CHARS = 2_000_000
_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.S)
_NODE_KEYS = frozenset({"id", "kind", "instructions", "depends_on", "parameters"})

_SYSTEM = """You are a planner. Break the user's request into a workflow: a directed acyclic
graph of steps that other model calls will carry out. Steps run in parallel whenever their
dependencies allow, so only add a dependency when a step really needs another step's result.

Reply with a JSON object only, no prose, no code fences, matching this JSON schema:
{schema}

Rules:
- "id": short, unique, letters/digits/'-'/'_' only (no spaces), e.g. "outline" or "section-2".
- "kind": one of {kinds}. Use "llm" unless a step clearly needs one of the others.
- "instructions": what the step must produce, self-contained.
- "depends_on": ids of earlier steps whose results this step needs; no cycles.
- At most {max_nodes} steps; usually 4 to 15. End with one step that produces the deliverable.{extra}"""

_APPROVAL_RULE = """
- "approval" steps wait for a person: use one only where the request or a constraint asks for a
  human review or sign-off ("must be approved by legal", "review before publishing"), placed after
  the steps producing what must be approved and before the steps that may only run once it is
  (publishing, sending). Its "instructions" are the question put to the reviewer."""


class _NodeReply(pydantic.BaseModel):
    id: str
    kind: str = "llm"
    instructions: str
    depends_on: list[str] = []


class _PlanReply(pydantic.BaseModel):
    nodes: list[_NodeReply]


def plan_reply_schema() -> dict[str, Any]:
    """Return the JSON schema the planner asks the model to follow."""
    return _PlanReply.model_json_schema()


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
                plan = self.parse(reply.text, vibe)
            except PlanValidationError as exc:
                errors.append("; ".join(exc.problems))
                logger.info("plan rejected (%s); asking for a repair", errors[-1])
                messages += [
                    {"role": "assistant", "content": reply.text[:20_000]},
                    {"role": "user", "content": f"That plan is invalid: {errors[-1]}. Reply with "
                                                "the corrected JSON object only."},
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

    def parse(self, text: str, vibe: Vibe) -> WorkflowPlan:
        """Turn a reply into a plan, or raise `PlanValidationError` saying what to fix."""
        if len(text) > MAX_REPLY_CHARS:
            raise PlanValidationError([f"the reply has {len(text)} characters; too large"])
        try:
            data = orjson.loads(_strip_fences(text))
        except orjson.JSONDecodeError as exc:
            raise PlanValidationError([f"the reply is not valid JSON ({exc})"]) from None
        if isinstance(data, list):
            data = {"nodes": data}
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise PlanValidationError(['the reply must be a JSON object with a "nodes" array'])
        nodes = data["nodes"]
        if len(nodes) > self.config.max_plan_nodes:
            raise PlanValidationError(
                [f"the plan has {len(nodes)} steps; at most {self.config.max_plan_nodes} allowed"])
        bad_kinds = sorted({str(n.get("kind")) for n in nodes
                            if isinstance(n, dict) and n.get("kind", "llm") not in self.kinds})
        if bad_kinds:
            raise PlanValidationError([f"unknown kind(s) {bad_kinds}; use one of {self.kinds}"])
        # Models like to add fields ("name", "description"); keep the ones a node has.
        nodes = [{k: v for k, v in n.items() if k in _NODE_KEYS} if isinstance(n, dict) else n
                 for n in nodes]
        return WorkflowPlan(plan_id=vibe.default_plan_id(), vibe=vibe, nodes=nodes,
                            planner=self.name, model=self.config.model)

    def _system_prompt(self) -> str:
        schema = orjson.dumps(plan_reply_schema()).decode()
        extra = _APPROVAL_RULE if "approval" in self.kinds else ""
        return _SYSTEM.format(schema=schema, kinds=self.kinds, max_nodes=self.config.max_plan_nodes,
                              extra=extra)

    def _response_format(self) -> dict[str, Any] | None:
        if self._mode in ("auto", "json_schema"):
            return {"type": "json_schema", "json_schema": {
                "name": "workflow_plan", "schema": plan_reply_schema(), "strict": False}}
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
