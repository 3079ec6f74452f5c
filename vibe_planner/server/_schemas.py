"""Request and response bodies of the HTTP API (they make its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "AnswerReport",
    "AnswerRequest",
    "CheckpointSummary",
    "DagNode",
    "ErrorBody",
    "ErrorDetail",
    "PlanDetail",
    "PlanList",
    "PendingRequest",
    "PlanSummary",
    "Progress",
    "PruneReport",
    "PruneRequest",
    "SubmitRequest",
    "SubmitResponse",
    "UsageReport",
    "VerifyProblem",
    "VerifyReport",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VibeBody(_Body):
    """A vibe: what is wanted, how it should feel, hard requirements."""

    description: str
    style: str | None = None
    constraints: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Checked by `Vibe` itself (depth, JSON types), whose error the answer carries."""


class SubmitRequest(_Body):
    """``POST /v1/plans``: a vibe to plan and run."""

    vibe: str | VibeBody
    """A description, or a whole vibe."""
    plan_id: str | None = None
    """Default: derived from the vibe, so the same vibe finds its checkpoints again."""
    fresh: bool = False
    """Plan again and run from scratch (default: resume the plan's latest checkpoint, if any)."""
    metadata: dict[str, JsonValue] | None = None
    """Run metadata, stored in the plan's checkpoints."""


class ErrorDetail(BaseModel):
    """What went wrong: the error's type and its message."""

    type: str
    message: str


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx response."""

    error: ErrorDetail


class Progress(BaseModel):
    """Node counts."""

    total: int = 0
    completed: int = 0
    running: int = 0
    failed: int = 0


class PlanSummary(BaseModel):
    """A plan in a listing."""

    plan_id: str
    status: str
    description: str
    progress: Progress
    updated_at: datetime | None
    live: bool
    """Whether this server runs (or ran lately) the plan; else what its checkpoints say."""


class PlanList(BaseModel):
    """``GET /v1/plans``: one page of plans, most recently active first."""

    plans: list[PlanSummary]
    total: int
    offset: int
    limit: int


class SubmitResponse(BaseModel):
    """``POST /v1/plans`` (202): the plan id to follow."""

    plan_id: str
    status: str
    events: str
    """Where its progress events stream (Server-Sent Events)."""


class DagNode(BaseModel):
    """A node of the plan's DAG and its status."""

    id: str
    kind: str
    depends_on: list[str]
    status: str


class PendingRequest(BaseModel):
    """A node's question to a person, waiting for an answer (``POST .../responses``)."""

    id: str
    node_id: str
    prompt: str
    json_schema: dict[str, Any] | None = None
    """What the answer must match (``None`` while the run that asked is still going on)."""
    asked_at: datetime | None = None
    deadline: datetime | None = None


class AnswerRequest(_Body):
    """``POST /v1/plans/{plan_id}/responses``: the answer to one pending request."""

    request_id: str = Field(max_length=200)
    value: JsonValue
    """The answer, as JSON; an approval takes ``{"approved": true|false, "comment": "..."}``."""


class AnswerReport(BaseModel):
    """The answer is recorded; the plan goes on (``events`` streams what happens next)."""

    plan_id: str
    request_id: str
    status: str
    """The request's status: ``answered``."""
    events: str


class CheckpointRef(BaseModel):
    """The newest checkpoint of a plan."""

    checkpoint_id: str
    reason: str | None
    created_at: datetime | None


class PlanDetail(BaseModel):
    """``GET /v1/plans/{plan_id}``."""

    plan_id: str
    status: str
    live: bool
    vibe: dict[str, Any]
    progress: Progress
    nodes: list[DagNode] | None
    """The DAG (``None`` while the plan is being made)."""
    usage: dict[str, int] | None
    error: ErrorDetail | None
    last_event_id: str | None
    """Pass it as ``Last-Event-ID`` to stream only what comes after this view."""
    latest_checkpoint: CheckpointRef | None
    pending_requests: list[PendingRequest] = Field(default_factory=list)
    """What the plan waits for a person to answer."""


class CheckpointSummary(BaseModel):
    """A checkpoint in a listing (damaged ones too, with ``error``)."""

    checkpoint_id: str
    plan_id: str
    sequence: int
    created_at: datetime | None
    reason: str | None
    completed_nodes: int
    total_nodes: int
    size_bytes: int
    error: str | None = None


class VerifyProblem(BaseModel):
    """A damaged file."""

    file: str
    """The file, relative to the checkpoint folder."""
    reason: str


class VerifyReport(BaseModel):
    """``GET /v1/checkpoints/verify``: every checkpoint and journal checked, nothing changed."""

    ok: bool
    checkpoints: int
    problems: list[VerifyProblem]


class PruneRequest(_Body):
    """``POST /v1/plans/{plan_id}/checkpoints/prune``."""

    keep_last: int = Field(ge=1, le=1_000_000)


class PruneReport(BaseModel):
    """The checkpoints deleted and how many were kept."""

    deleted: list[str]
    kept: int


class PlanUsage(BaseModel):
    """Checkpoints and bytes of one plan."""

    plan_id: str
    checkpoints: int
    bytes: int


class UsageReport(BaseModel):
    """``GET /v1/checkpoints/usage``: what the checkpoints take, per plan and in total."""

    plans: list[PlanUsage]
    checkpoints: int
    bytes: int
