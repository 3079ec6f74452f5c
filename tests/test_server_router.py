"""The routes mounted in an app of one's own, served by a real uvicorn on loopback (in-process)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from vibe_planner import MetaPlanner, WorkflowPersistenceManager
from vibe_planner.server import BodySizeLimit, PlanService, create_router, install_error_handlers

pytestmark = pytest.mark.anyio
TOKEN = "router-token-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio


def own_app(tmp_path: Path) -> tuple[FastAPI, PlanService]:
    planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"))
    service = PlanService(planner, state_dir=tmp_path / "state")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, str]:  # the app's own route, untouched
        return {"hello": "world"}

    app.include_router(create_router(service, tokens=[TOKEN]), prefix="/planner")
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=4096)
    return app, service


async def test_the_router_serves_from_inside_another_app(tmp_path: Path) -> None:
    app, service = own_app(tmp_path)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn has started
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            assert (await client.get("/hello")).json() == {"hello": "world"}
            answer = await client.post("/planner/v1/plans", json={"vibe": "mounted"})
            assert answer.status_code == 202, answer.text
            plan_id = answer.json()["plan_id"]
            async with client.stream("GET", f"/planner/v1/plans/{plan_id}/events") as response:
                body = (await response.aread()).decode()
            assert body.rstrip().endswith('"status":"completed","error":null}')
            plan = (await client.get(f"/planner/v1/plans/{plan_id}")).json()
            assert plan["status"] == "completed" and plan["progress"]["completed"] == 10
            bad = await client.get("/planner/v1/plans/a..b")
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "InvalidIdentifierError"
            assert (await client.post("/planner/v1/plans", content=b"x" * 5000)).status_code == 413
            assert (await client.get("/planner/v1/plans", headers={"Authorization": ""})).status_code == 401
        server.should_exit = True
    assert not service.accepting  # the app's lifespan closed the service with it
