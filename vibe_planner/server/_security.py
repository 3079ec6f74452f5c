"""Bearer-token checks and request body limits."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import orjson
from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vibe_planner import VibePlannerError

__all__ = ["BodySizeLimit", "NotAuthenticatedError", "TokenCheck"]


class NotAuthenticatedError(VibePlannerError):
    """The request has no valid bearer token (401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: send 'Authorization: Bearer <token>'")


class TokenCheck:
    """A FastAPI dependency: the request must carry one of *tokens* (none: open to all).

    Tokens are compared in constant time and never repeated in a response or a log.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self._bearer = HTTPBearer(auto_error=False, description="The server's API token.")

    async def __call__(self, request: Request) -> None:
        """Raise `NotAuthenticatedError` unless the request's bearer token is one of ours."""
        if not self._tokens:
            return
        credentials: HTTPAuthorizationCredentials | None = await self._bearer(request)
        if credentials is None:
            raise NotAuthenticatedError("no bearer token")
        given = credentials.credentials.encode()
        if not any(hmac.compare_digest(given, token) for token in self._tokens):
            raise NotAuthenticatedError("wrong bearer token")


class BodySizeLimit:
    """ASGI middleware: a request body over *max_bytes* gets 413 and is not read further."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"error": {"type": "RequestTooLarge", "message":
                             f"the request body is over the limit of {self.max_bytes} bytes"}})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised into the app when a streamed body passes the limit (FastAPI answers 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over the limit of {max_bytes} bytes")
