"""What the API shows of plans: a live plan from memory, any other from its newest checkpoint."""

from __future__ import annotations

from typing import Any

from vibe_planner import Checkpoint, CheckpointCorruptError, CheckpointInfo, CheckpointNotFoundError

from ._schemas import CheckpointRef, DagNode, ErrorDetail, PendingRequest, PlanDetail, PlanSummary, Progress
from ._service import PlanService
from ._status import LivePlan, checkpoint_status

__all__ = ["list_plans", "plan_detail"]


async def plan_detail(service: PlanService, plan_id: str) -> PlanDetail:
    """Return everything the API says about one plan.

    Raises:
        InvalidIdentifierError: The id is malformed.
        CheckpointNotFoundError: The plan is neither live nor stored.

    """
    stored = await service.manager.has_checkpoints(plan_id)  # validates the id first
    live = service.live(plan_id)
    if live is not None:
        return await _live_detail(service, live, stored)
    if not stored:
        raise CheckpointNotFoundError(None, plan_id)
    try:
        checkpoint = await service.manager.latest(plan_id)
    except CheckpointCorruptError as exc:
        error = ErrorDetail(type=type(exc).__name__, message=str(exc))
        return PlanDetail(plan_id=plan_id, status="corrupt", live=False, vibe={}, progress=Progress(),
                          nodes=None, usage=None, error=error, last_event_id=None, latest_checkpoint=None)
    assert checkpoint is not None
    statuses = {node_id: str(r.status) for node_id, r in checkpoint.node_results.items()}
    total = len(checkpoint.workflow_plan.nodes)
    return PlanDetail(
        plan_id=plan_id, live=False, vibe=checkpoint.vibe.model_dump(mode="json"),
        status=checkpoint_status(checkpoint.reason, len(checkpoint.completed_nodes), total),
        progress=Progress(total=total, completed=len(checkpoint.completed_nodes),
                          failed=len(checkpoint.failed_nodes)),
        nodes=_dag(checkpoint, statuses), usage=checkpoint.usage.model_dump(), error=None,
        last_event_id=None, latest_checkpoint=_ref(checkpoint),
        pending_requests=[PendingRequest(**r.model_dump()) for r in checkpoint.pending_requests],
    )


async def _live_detail(service: PlanService, live: LivePlan, stored: bool) -> PlanDetail:
    last_event_id = live.log.last_id  # before any await: the statuses shown include its event
    latest: Checkpoint | None = None
    if stored and (live.checkpoints or not live.fresh):
        try:
            latest = await service.manager.latest(live.plan_id)
        except CheckpointCorruptError:
            latest = None  # the run itself says what is wrong when it reads it
    if live.plan is None and latest is not None:
        # This run's checkpoint, or the one it resumes from: either way its completed nodes
        # stay completed, and its DAG is this run's (a fresh run is read only once it wrote one).
        live.plan = latest.workflow_plan
        live.restored = set(latest.completed_nodes)
    nodes = None
    if live.plan is not None:
        statuses = live.node_statuses()
        nodes = [DagNode(id=n.id, kind=n.kind, depends_on=list(n.depends_on), status=statuses[n.id])
                 for n in live.plan.nodes]
    return PlanDetail(
        plan_id=live.plan_id, status=live.status, live=True, vibe=live.vibe.model_dump(mode="json"),
        progress=Progress(**live.progress), nodes=nodes, usage=live.usage,
        error=ErrorDetail(**live.error) if live.error else None, last_event_id=last_event_id,
        latest_checkpoint=_ref(latest) if latest is not None else None,
        pending_requests=[PendingRequest(**r) for r in live.pending.values()],
    )


async def list_plans(service: PlanService, status: str | None, offset: int, limit: int
                     ) -> tuple[list[PlanSummary], int]:
    """Return one page of plans (live ones first, newest first; then stored ones) and the total."""
    rows: list[dict[str, Any]] = [live.summary() for live in service.live_plans()]
    seen = {row["plan_id"] for row in rows}
    for info in _newest_per_plan(await service.manager.list_checkpoints()):
        if info.plan_id not in seen:
            seen.add(info.plan_id)
            rows.append(_stored_summary(info))
    if status is not None:
        rows = [row for row in rows if row["status"] == status]
    return [PlanSummary(**row) for row in rows[offset:offset + limit]], len(rows)


def _newest_per_plan(infos: list[CheckpointInfo]) -> list[CheckpointInfo]:
    newest: dict[str, CheckpointInfo] = {}
    for info in infos:  # each plan's newest comes first
        newest.setdefault(info.plan_id, info)
    return list(newest.values())


def _stored_summary(info: CheckpointInfo) -> dict[str, Any]:
    return {"plan_id": info.plan_id, "description": "", "live": False, "updated_at": info.created_at,
            "status": checkpoint_status(info.reason, info.completed_nodes, info.total_nodes, info.error),
            "progress": {"total": info.total_nodes, "completed": info.completed_nodes}}


def _dag(checkpoint: Checkpoint, statuses: dict[str, str]) -> list[DagNode]:
    return [DagNode(id=n.id, kind=n.kind, depends_on=list(n.depends_on),
                    status=statuses.get(n.id, "pending")) for n in checkpoint.workflow_plan.nodes]


def _ref(checkpoint: Checkpoint) -> CheckpointRef:
    return CheckpointRef(checkpoint_id=checkpoint.checkpoint_id, reason=checkpoint.reason,
                         created_at=checkpoint.created_at)
