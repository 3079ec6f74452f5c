"""The HTTP routes, as one `APIRouter` an app can include: plans, their events, checkpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response
from fastapi.responses import StreamingResponse

from vibe_planner import Checkpoint, CheckpointInfo, Vibe

from ._events import EventLog
from ._schemas import (
    AnswerReport,
    AnswerRequest,
    CheckpointSummary,
    ErrorBody,
    PlanDetail,
    PlanList,
    PlanUsage,
    PruneReport,
    PruneRequest,
    SubmitRequest,
    SubmitResponse,
    UsageReport,
    VerifyProblem,
    VerifyReport,
)
from ._security import TokenCheck
from ._service import PlanService
from ._status import LivePlan
from ._views import list_plans, plan_detail

__all__ = ["create_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 503)}
PlanId = Annotated[str, "a plan id"]


def create_router(service: PlanService, *, tokens: Sequence[str] = ()) -> APIRouter:
    """Return the API's routes (under ``/v1``) for *service*, to include in any FastAPI app.

    Every route needs one of *tokens* as a bearer token (none given: no check). The app
    must open the service in its lifespan (``async with service: yield``).
    """
    check = TokenCheck(tokens)
    router = APIRouter(prefix="/v1", responses=_ERRORS, dependencies=[Depends(check)])
    _plan_routes(router, service)
    _event_routes(router, service)
    _checkpoint_routes(router, service)
    return router


def _plan_routes(router: APIRouter, service: PlanService) -> None:
    @router.post("/plans", status_code=202, response_model=SubmitResponse, tags=["plans"])
    async def submit_plan(body: SubmitRequest) -> SubmitResponse:
        """Plan and run a vibe in the background (resuming its plan's checkpoints, if any)."""
        vibe = Vibe(description=body.vibe) if isinstance(body.vibe, str) else Vibe(**body.vibe.model_dump())
        live = await service.submit(vibe, body.plan_id, fresh=body.fresh, metadata=body.metadata)
        return _accepted(live)

    @router.get("/plans", response_model=PlanList, tags=["plans"])
    async def get_plans(
        status: str | None = None, offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> PlanList:
        """Plans this server runs or ran lately, then every other stored plan."""
        plans, total = await list_plans(service, status, offset, limit)
        return PlanList(plans=plans, total=total, offset=offset, limit=limit)

    @router.get("/plans/{plan_id}", response_model=PlanDetail, tags=["plans"])
    async def get_plan(plan_id: PlanId) -> PlanDetail:
        """Status, progress, the DAG with each node's status, usage, the newest checkpoint."""
        return await plan_detail(service, plan_id)

    @router.post("/plans/{plan_id}/cancel", response_model=SubmitResponse, tags=["plans"])
    async def cancel_plan(plan_id: PlanId) -> SubmitResponse:
        """Cancel a running plan; answers once its ``cancelled`` checkpoint is written."""
        return _accepted(await service.cancel(plan_id))

    @router.post("/plans/{plan_id}/resume", status_code=202, response_model=SubmitResponse, tags=["plans"])
    async def resume_plan(plan_id: PlanId) -> SubmitResponse:
        """Resume a plan from its newest checkpoint, in the background."""
        return _accepted(await service.resume(plan_id))

    @router.post("/plans/{plan_id}/responses", response_model=AnswerReport, tags=["plans"])
    async def answer(plan_id: PlanId, body: AnswerRequest) -> AnswerReport:
        """Answer a pending request (validated against its schema, recorded durably); the plan goes on."""
        request = await service.respond(plan_id, body.request_id, body.value)
        return AnswerReport(plan_id=plan_id, request_id=request.id, status=request.status,
                            events=f"/v1/plans/{plan_id}/events")

    @router.delete("/plans/{plan_id}", status_code=204, response_class=Response, tags=["plans"])
    async def delete_plan(plan_id: PlanId) -> Response:
        """Delete a plan's checkpoints and forget it (refused while it runs)."""
        await service.delete(plan_id)
        return Response(status_code=204)


def _event_routes(router: APIRouter, service: PlanService) -> None:
    @router.get("/plans/{plan_id}/events", tags=["events"], response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "Server-Sent Events, ending with `plan_ended`"}})
    async def stream_events(
        plan_id: PlanId, last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    ) -> StreamingResponse:
        """Stream the plan's progress events (Server-Sent Events), from ``Last-Event-ID`` on.

        Each event has an id ``<epoch>-<n>``; reconnecting with the last id seen replays
        what came after it. The stream ends with a ``plan_ended`` event when the run ends.
        """
        detail = await plan_detail(service, plan_id)  # validates; 404 when unknown
        live = service.live(plan_id)
        if live is None:  # not run here lately: one event saying how it stands
            return _stream(service, _one_event(detail))
        try:
            seen = live.log.position(last_event_id)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return _stream(service, _follow(live.log, seen, service.heartbeat))


def _checkpoint_routes(router: APIRouter, service: PlanService) -> None:
    manager = service.manager

    @router.get("/checkpoints", response_model=list[CheckpointSummary], tags=["checkpoints"])
    async def list_checkpoints(plan_id: str | None = None) -> list[CheckpointSummary]:
        """Checkpoints of one plan (or all), newest first; damaged ones too, with ``error``."""
        return [_summary(info) for info in await manager.list_checkpoints(plan_id)]

    @router.get("/plans/{plan_id}/checkpoints", response_model=list[CheckpointSummary], tags=["checkpoints"])
    async def plan_checkpoints(plan_id: PlanId) -> list[CheckpointSummary]:
        """List a plan's checkpoints, newest first."""
        return [_summary(info) for info in await manager.list_checkpoints(plan_id)]

    @router.get("/checkpoints/verify", response_model=VerifyReport, tags=["checkpoints"])
    async def verify(plan_id: str | None = None) -> VerifyReport:
        """Check every checkpoint and journal file (of one plan or all); change nothing."""
        problems = await manager.verify(plan_id)
        count = len(await manager.list_checkpoints(plan_id))
        return VerifyReport(ok=not problems, checkpoints=count, problems=[
            VerifyProblem(file=_relative(p.path), reason=p.reason) for p in problems])

    @router.get("/checkpoints/usage", response_model=UsageReport, tags=["checkpoints"])
    async def usage(plan_id: str | None = None) -> UsageReport:
        """Checkpoints and bytes, per plan and in total."""
        plans: dict[str, PlanUsage] = {}
        for info in await manager.list_checkpoints(plan_id):
            row = plans.setdefault(info.plan_id, PlanUsage(plan_id=info.plan_id, checkpoints=0, bytes=0))
            row.checkpoints += 1
            row.bytes += info.size_bytes
        rows = list(plans.values())
        return UsageReport(plans=rows, checkpoints=sum(r.checkpoints for r in rows),
                           bytes=sum(r.bytes for r in rows))

    @router.get("/checkpoints/{checkpoint_id}", response_model=Checkpoint, tags=["checkpoints"])
    async def show(checkpoint_id: str) -> Checkpoint:
        """One checkpoint, whole (verified)."""
        return await manager.get_checkpoint(checkpoint_id)

    @router.delete("/checkpoints/{checkpoint_id}", status_code=204, response_class=Response,
                   tags=["checkpoints"])
    async def delete(checkpoint_id: str) -> Response:
        """Delete one checkpoint."""
        await manager.delete_checkpoint(checkpoint_id)
        return Response(status_code=204)

    @router.post("/plans/{plan_id}/checkpoints/prune", response_model=PruneReport, tags=["checkpoints"])
    async def prune(plan_id: PlanId, body: PruneRequest) -> PruneReport:
        """Delete all but a plan's newest ``keep_last`` checkpoints."""
        deleted = await manager.prune(plan_id, body.keep_last)
        return PruneReport(deleted=deleted, kept=len(await manager.list_checkpoints(plan_id)))


# -- helpers ----------------------------------------------------------------------------------
def _accepted(live: LivePlan) -> SubmitResponse:
    return SubmitResponse(plan_id=live.plan_id, status=live.status,
                          events=f"/v1/plans/{live.plan_id}/events")


def _summary(info: CheckpointInfo) -> CheckpointSummary:
    return CheckpointSummary(**info.model_dump(exclude={"path"}))  # no server paths in answers


def _relative(path: Path) -> str:
    return "/".join(Path(path).parts[-2:])


def _stream(service: PlanService, records: AsyncIterator[dict[str, Any] | None]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        service.streams += 1
        try:
            yield b"retry: 1000\n\n"
            async for record in records:
                yield b": keep-alive\n\n" if record is None else _frame(record)
        finally:
            service.streams -= 1

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _frame(record: dict[str, Any]) -> bytes:
    head = f"id: {record['id']}\n" if "id" in record else ""
    return f"{head}event: {record['kind']}\ndata: ".encode() + orjson.dumps(record) + b"\n\n"


async def _follow(log: EventLog, seen: int, heartbeat: float) -> AsyncIterator[dict[str, Any] | None]:
    async for record in log.follow(seen, heartbeat):
        yield record


async def _one_event(detail: PlanDetail) -> AsyncIterator[dict[str, Any] | None]:
    yield {"kind": "plan_status", "plan_id": detail.plan_id, "status": detail.status,
           "progress": detail.progress.model_dump()}
