"""The data model: vibes, plans, nodes, results and checkpoints (pydantic v2, JSON via orjson).

Models know nothing of scheduling or storage. `WorkflowPlan` validates itself as a DAG on
construction, so a plan that exists is a plan that can run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NotRequired, Self

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, field_validator
from typing_extensions import TypedDict

from ._dag import DEFAULT_MAX_NODES, topological_order
from ._exceptions import InvalidIdentifierError, InvalidVibeError, PlanValidationError
from ._ids import check_node_id, check_plan_id

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointKind",
    "CheckpointReason",
    "ErrorInfo",
    "ExecutionResult",
    "InputRequest",
    "NodeResult",
    "NodeStatus",
    "RunStatus",
    "TokenUsage",
    "Vibe",
    "WorkflowNode",
    "WorkflowPlan",
]

SCHEMA_VERSION = 2
"""Version of the checkpoint document written by this release (2: bases and deltas)."""

CheckpointKind = Literal["base", "delta"]
"""How a checkpoint is stored.

- ``base``: the file holds the whole state (every version-1 file is one).
- ``delta``: the file holds what changed since the checkpoint before it; the state is computed
  from its chain (its base and the deltas between), see docs/checkpoints.md, "File format".
"""

MAX_JSON_DEPTH = 200
"""Deepest nesting accepted in outputs, parameters and metadata.

Checkpoints embed these values a few levels down and orjson refuses documents nested more than
255 levels, so deeper values are refused up front, where the error can name them.
"""
_DEPTH_PAD = 254 - MAX_JSON_DEPTH
_SCALARS = (str, int, bool, type(None))


def check_json_types(value: Any) -> None:
    """Raise `TypeError` unless *value* is made only of JSON types.

    orjson would quietly turn UUIDs, dates, dataclasses and enums into strings or objects and
    NaN into ``null``; a checkpoint must store what the node returned, so those are refused.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if not math.isfinite(item):
                raise TypeError(f"{item!r} is not a JSON number")
        elif kind is dict:
            for key, member in item.items():
                if type(key) is not str:
                    raise TypeError(f"object key {key!r} is not a str")
                stack.append(member)
        elif kind is list or kind is tuple:
            stack.extend(item)
        else:
            raise TypeError(f"a {kind.__module__}.{kind.__qualname__} is not a JSON value")


def encode_json_bounded(value: Any) -> bytes:
    """Encode *value* canonically (sorted keys); `TypeError` if not JSON or nested too deeply."""
    if type(value) in _SCALARS:
        # Most outputs; nothing nests in them, so no check and no depth padding (whose 54
        # wrapping lists cost far more than encoding a short string).
        return orjson.dumps(value)
    check_json_types(value)
    # Wrapping in _DEPTH_PAD lists makes orjson's own depth limit enforce MAX_JSON_DEPTH on
    # the value, at no extra cost; the wrapper's brackets are then sliced off.
    wrapped: Any = value
    for _ in range(_DEPTH_PAD):
        wrapped = [wrapped]
    try:
        encoded = orjson.dumps(wrapped, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        if "Recursion limit" in str(exc):
            raise TypeError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
        raise
    return encoded[_DEPTH_PAD:-_DEPTH_PAD]


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    if not value:
        return value  # the common case, and it matters when loading 10,000 nodes
    try:
        encode_json_bounded(value)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return value

CheckpointReason = Literal[
    "planned", "resumed", "interval", "failure", "cancelled", "final", "manual", "waiting", "answered"
]
"""Why a checkpoint was written.

- ``planned``: right after planning, before any node ran (a resume never plans again).
- ``resumed``: when a run resumes, before any node runs (it starts a new journal).
- ``interval``: every ``checkpoint_interval`` finished nodes.
- ``failure``: a node failed for good.
- ``cancelled``: the run was cancelled (task group cancel, Ctrl-C).
- ``final``: the run ended (completed or failed).
- ``manual``: written by `MetaPlanner.create_checkpoint`.
- ``waiting``: the run ended because nothing else could run before a person answers.
- ``answered``: an answer to a pending request was recorded (`MetaPlanner.respond`).
"""

RunStatus = Literal["completed", "failed", "cancelled", "waiting"]
"""Outcome of a run: every node completed, some node failed, the run was cancelled, or it
stopped to wait for a person's answer (see `InputRequest`; a failure takes precedence)."""


class NodeStatus(StrEnum):
    """Where a node stands."""

    PENDING = "pending"
    """Not started yet (or reset for a resume)."""
    RUNNING = "running"
    """Its handler is running."""
    COMPLETED = "completed"
    """Finished with an output; never run again for this plan."""
    FAILED = "failed"
    """Its handler failed on every attempt, or with a permanent error."""
    SKIPPED = "skipped"
    """Not run because a dependency failed."""
    CANCELLED = "cancelled"
    """Not finished because the run was cancelled."""
    WAITING = "waiting"
    """Asked a person for input (`NodeContext.request_input`); runs again once answered."""


def _pydantic_problems(exc: pydantic.ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        parts = [str(part) for part in error["loc"]]
        if len(parts) > 8:  # a deeply nested value: keep the start, which names the field
            parts = [*parts[:4], "...", *parts[-2:]]
        where = ".".join(parts) or "value"
        problems.append(f"{where}: {error['msg']}")
    return problems


class Vibe(BaseModel):
    """A loose description of what the developer wants.

    Example:
        >>> Vibe(description="a launch blog post", style="warm", constraints=["< 800 words"])
        Vibe(description='a launch blog post', style='warm', constraints=['< 800 words'], metadata={})

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field(min_length=1, max_length=100_000)
    """What is wanted, in plain words. Required and not blank."""
    style: str | None = Field(default=None, max_length=10_000)
    """How it should feel (tone, voice, format)."""
    constraints: list[str] = Field(default_factory=list, max_length=100)
    """Hard requirements, one per item."""
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    """Free-form data for the app; not part of the fingerprint."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise InvalidVibeError(_pydantic_problems(exc)) from None

    _metadata_depth = field_validator("metadata")(classmethod(lambda cls, v: _bounded_json(v)))

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    def fingerprint(self) -> str:
        """Return a stable hex digest of the description, style and constraints."""
        canonical = orjson.dumps(
            {"description": self.description, "style": self.style, "constraints": self.constraints},
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).hexdigest()

    def default_plan_id(self) -> str:
        """Return the plan id `execute_with_resume` uses for this vibe: ``vibe-<fingerprint>``."""
        return "vibe-" + self.fingerprint()[:24]


class WorkflowNode(BaseModel):
    """One unit of work in a plan.

    Example:
        >>> WorkflowNode(id="outline", instructions="Outline the post", depends_on=["brief"]).kind
        'llm'

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    """Unique within the plan: ASCII letters, digits, ``_ . : -``, at most 128 characters."""
    kind: str = Field(default="llm", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
    """Which handler runs the node (``llm`` by default)."""
    instructions: str = Field(default="", max_length=100_000)
    """What the node must do."""
    depends_on: list[str] = Field(default_factory=list)
    """Ids of the nodes whose outputs this node needs."""
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    """Handler-specific settings."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds one attempt may take; overrides the planner's default."""
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    """Attempts before the node fails; overrides the planner's retry policy."""

    _parameters_depth = field_validator("parameters")(classmethod(lambda cls, v: _bounded_json(v)))

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        try:
            return check_node_id(value)
        except InvalidIdentifierError as exc:
            raise ValueError(exc.reason) from None


class WorkflowPlan(BaseModel):
    """A validated DAG of nodes for one vibe.

    Construction raises `PlanValidationError` naming the offending nodes when ids repeat,
    a dependency is unknown, the graph has a cycle, or the plan is empty or too large.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: str
    """Names the plan's checkpoint folder; see `Vibe.default_plan_id`."""
    vibe: Vibe
    """The vibe the plan was made for."""
    nodes: list[WorkflowNode]
    """The nodes, in any order."""
    planner: str = "custom"
    """Name of the planner that made the plan (``offline``, ``llm``, ``custom``)."""
    model: str | None = None
    """LLM model that made the plan, if any."""
    usage: TokenUsage | None = None
    """Tokens spent making the plan (counted once in the run's usage)."""

    _order: list[str] = PrivateAttr(default_factory=list)
    _sinks: list[str] | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise _as_plan_error(exc) from None

    @field_validator("plan_id")
    @classmethod
    def _valid_plan_id(cls, value: str) -> str:
        try:
            return check_plan_id(value)
        except InvalidIdentifierError as exc:
            raise ValueError(exc.reason) from None

    @pydantic.model_validator(mode="after")
    def _valid_dag(self) -> WorkflowPlan:
        # `model_validate` runs this twice (once inside the custom `__init__`, once after it);
        # the nodes are frozen, so the first order found stays right.
        if not self._order:
            self._order = topological_order(self.nodes, max_nodes=DEFAULT_MAX_NODES)
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Return a copy; with *update*, a new plan validated like any other (DAG included)."""
        if update:
            return type(self)(**{**dict(self), **update})
        return super().model_copy(deep=deep)

    @property
    def order(self) -> list[str]:
        """Node ids in an order where every node comes after its dependencies."""
        return self._order

    def node(self, node_id: str) -> WorkflowNode:
        """Return the node with this id (`KeyError` if absent)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def sinks(self) -> list[str]:
        """Return the ids of nodes no other node depends on (the plan's deliverables)."""
        if self._sinks is None:  # worked out once: the plan is frozen
            needed = {dep for node in self.nodes for dep in node.depends_on}
            self._sinks = [node.id for node in self.nodes if node.id not in needed]
        return list(self._sinks)


def _as_plan_error(exc: pydantic.ValidationError) -> PlanValidationError:
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, PlanValidationError):
            return cause
    node_ids = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
            node_ids.append(f"#{loc[1]}")
    return PlanValidationError(_pydantic_problems(exc), node_ids)


class ErrorInfo(BaseModel):
    """Why a node failed."""

    model_config = ConfigDict(frozen=True)

    type: str
    """Exception class name."""
    message: str
    """Exception message."""
    retryable: bool = True
    """Whether the failure was considered transient."""


class TokenUsage(BaseModel):
    """LLM tokens spent (zero for offline runs)."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    """Number of LLM requests that reported usage."""

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            requests=self.requests + other.requests,
        )


class NodeResult(BaseModel):
    """The outcome of one node."""

    model_config = ConfigDict(frozen=True)

    node_id: str
    status: NodeStatus
    output: JsonValue = None
    """The handler's return value (JSON); ``None`` unless completed."""
    error: ErrorInfo | None = None
    attempts: int = 0
    """Attempts made, across resumes."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    usage: TokenUsage | None = None


class ResultRecord(TypedDict):
    """A node result as a checkpoint document stores it: what a resume restores from.

    The keys and types of `NodeResult`, validated without building a model per node (a
    resume of a large plan restores thousands of them before its first node may start).
    """

    node_id: str
    status: NodeStatus
    output: NotRequired[JsonValue]
    error: NotRequired[ErrorInfo | None]
    attempts: NotRequired[int]
    started_at: NotRequired[datetime | None]
    finished_at: NotRequired[datetime | None]
    usage: NotRequired[TokenUsage | None]


class InputRequest(BaseModel):
    """A node's question to a person, and once given, the answer (see docs/human-in-the-loop.md).

    Example:
        >>> request = InputRequest(id="approve:1", node_id="approve", prompt="Publish?",
        ...                        asked_at="2026-01-01T00:00:00Z")
        >>> request.status
        'pending'

    """

    model_config = ConfigDict(frozen=True)

    id: str
    """``<node_id>:<n>`` for the node's n-th question (or ``<node_id>:<key>``); stable across runs."""
    node_id: str
    """The node that asked."""
    prompt: str
    """What the person is asked."""
    json_schema: dict[str, JsonValue] = Field(default_factory=dict)
    """The JSON Schema the answer must match (``{}``: any JSON value)."""
    asked_at: datetime
    """When it was first asked (a resumed run asking again keeps it)."""
    deadline: datetime | None = None
    """When it expires unanswered, if ever."""
    has_default: bool = False
    """Whether the request takes `default` at its deadline (else the node fails)."""
    default: JsonValue = None
    """The answer taken at the deadline, if `has_default`."""
    status: Literal["pending", "answered", "expired"] = "pending"
    """``pending`` until answered; ``expired`` when its deadline passed first."""
    answer: JsonValue = None
    """The answer (or the default an expired request took)."""
    answered_at: datetime | None = None
    """When the answer was recorded."""


class _CheckpointFields(BaseModel):
    """The fields of a checkpoint document; subclasses say how node results are read."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    kind: CheckpointKind = "base"
    """Whether the file holds the whole state or a delta (the state is always whole here)."""
    base: str | None = None
    """The id of the base a delta's chain starts at; ``None`` for a base."""
    checkpoint_id: str
    sequence: int = Field(ge=0)
    """Increases by one per checkpoint of the plan; orders checkpoints whatever the clocks say."""
    plan_id: str
    run_id: str
    """Identifies the run (and its journal) that wrote the checkpoint."""
    created_at: datetime
    reason: CheckpointReason
    vibe: Vibe
    workflow_plan: WorkflowPlan
    completed_nodes: list[str]
    pending_nodes: list[str]
    failed_nodes: list[str]
    node_results: Any
    usage: TokenUsage = Field(default_factory=TokenUsage)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    input_requests: list[InputRequest] = Field(default_factory=list)
    """Every request the plan's nodes made of a person, pending or answered (absent: none)."""
    checksum: str
    """``sha256:<hex>`` of the canonical JSON of every other field."""


class Checkpoint(_CheckpointFields):
    """A checkpoint document, as stored in ``<checkpoint_dir>/<plan_id>/<checkpoint_id>.json``."""

    node_results: dict[str, NodeResult]

    @property
    def pending_requests(self) -> list[InputRequest]:
        """The requests still waiting for an answer (what `MetaPlanner.respond` takes)."""
        return [r for r in self.input_requests if r.status == "pending"]


class ResumePoint(_CheckpointFields):
    """A checkpoint document read for a resume: the same checks, node results kept as records."""

    node_results: dict[str, ResultRecord]


class CheckpointInfo(BaseModel):
    """A line of `WorkflowPersistenceManager.list_checkpoints`: a checkpoint's summary."""

    model_config = ConfigDict(frozen=True)

    checkpoint_id: str
    plan_id: str
    sequence: int
    created_at: datetime | None
    reason: str | None
    completed_nodes: int
    total_nodes: int
    size_bytes: int
    path: str
    error: str | None = None
    """Why the file could not be read, if it is damaged (the other fields are then partial)."""
    waiting_for: list[str] = Field(default_factory=list)
    """Ids of the input requests pending at this checkpoint (see `MetaPlanner.respond`)."""


class ExecutionResult(BaseModel):
    """What a run produced."""

    model_config = ConfigDict(frozen=True)

    plan_id: str
    run_id: str
    status: RunStatus
    plan: WorkflowPlan
    node_results: dict[str, NodeResult]
    outputs: dict[str, JsonValue]
    """Outputs of the sink nodes (those nothing depends on) that completed."""
    resumed_from: str | None = None
    """Checkpoint the run resumed from, if any."""
    checkpoints_written: list[str] = Field(default_factory=list)
    nodes_run: int = 0
    """Nodes executed by this call (not counting those restored from checkpoints)."""
    nodes_restored: int = 0
    """Completed nodes restored from checkpoints instead of being run again."""
    duration_seconds: float = 0.0
    usage: TokenUsage = Field(default_factory=TokenUsage)
    offline: bool = False
    """True when planning and LLM nodes used the embedded offline defaults."""
    pending_requests: list[InputRequest] = Field(default_factory=list)
    """What the run waits for when its status is ``waiting``: answer with `MetaPlanner.respond`."""

    @property
    def failed_nodes(self) -> list[str]:
        """Ids of the nodes that failed."""
        return [k for k, r in self.node_results.items() if r.status == NodeStatus.FAILED]


WorkflowPlan.model_rebuild()
