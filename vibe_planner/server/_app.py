"""`create_app`: the API, its error answers, the body limit and the dashboard, in one FastAPI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import vibe_planner
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    InvalidAnswerError,
    InvalidIdentifierError,
    PlanLockedError,
    PlanNotWaitingError,
    PlanStateError,
    RequestAlreadyAnsweredError,
    RequestExpiredError,
    ServerStoppingError,
    UnknownRequestError,
    UnsafeCheckpointFolderError,
    VibePlannerError,
)

from ._routes import create_router
from ._security import BodySizeLimit, NotAuthenticatedError
from ._service import PlanService

__all__ = ["STATIC", "create_app", "install_error_handlers"]

STATIC = Path(__file__).parent / "static"
"""The dashboard's files (the graph library is vendored here: no network at run time)."""

_STATUS: list[tuple[tuple[type[Exception], ...], int]] = [
    ((NotAuthenticatedError,), 401),
    ((CheckpointNotFoundError, UnknownRequestError), 404),
    ((InvalidIdentifierError,), 400),
    ((CheckpointMismatchError, PlanStateError, PlanLockedError), 409),
    ((CheckpointCorruptError, UnsafeCheckpointFolderError), 409),
    ((RequestAlreadyAnsweredError, RequestExpiredError, PlanNotWaitingError), 409),
    ((InvalidAnswerError,), 422),
    ((ServerStoppingError,), 503),
    ((VibePlannerError,), 422),  # a malformed vibe, metadata or plan
]


def create_app(
    service: PlanService, *, tokens: Sequence[str] = (), max_body_bytes: int = 1 << 20,
) -> FastAPI:
    """Return the whole service as an ASGI app: ``/v1`` API, ``/dashboard``, ``/openapi.json``.

    The app's lifespan opens *service* (its runs live and die with the app). Every ``/v1``
    route needs one of *tokens* (none: open); the dashboard's page and files are public
    (they hold no data: the page asks for the token and sends it with its API calls).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service:
            yield

    # No /docs or /redoc: their pages load scripts from a CDN, and nothing here uses the network.
    app = FastAPI(title="vibe-planner", version=vibe_planner.__version__, lifespan=lifespan,
                  description="Plan a vibe into a DAG, run it, watch it live, resume it.",
                  docs_url=None, redoc_url=None)
    service.secrets.extend(tokens)
    app.include_router(create_router(service, tokens=tokens))
    install_error_handlers(app)
    _dashboard_routes(app, service)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Answer our typed errors, bad requests and unknown routes as ``{"error": {type, message}}``."""
    app.add_exception_handler(VibePlannerError, _typed_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


async def _typed_error(request: Request, exc: VibePlannerError) -> JSONResponse:
    status = next(code for kind, code in _STATUS if isinstance(exc, kind))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _error(status, type(exc).__name__, " ".join(str(exc).splitlines()), headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # The offending input is not echoed: a bad request may carry anything, secrets included.
    problems = []
    for error in exc.errors()[:20]:
        parts = [str(part) for part in error.get("loc", ())]
        if len(parts) > 6:
            parts = [*parts[:4], "...", *parts[-2:]]
        where = ".".join(parts)
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return _error(422, "RequestValidationError", "invalid request: " + "; ".join(problems))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "RequestTooLarge" if exc.status_code == 413 else "HTTPError"
    return _error(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))


def _dashboard_routes(app: FastAPI, service: PlanService) -> None:
    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})

    @app.get("/v1/health", tags=["service"])
    async def health() -> dict[str, object]:
        """Whether the server accepts runs; how many run and how many event streams are open."""
        running = sum(1 for live in service.live_plans() if live.active)
        return {"status": "ok" if service.accepting else "stopping", "running": running,
                "streams": service.streams}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
