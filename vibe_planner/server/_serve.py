"""Run the service under uvicorn, with a shutdown that leaves every plan resumable.

On SIGTERM (or Ctrl-C): the listening sockets close (no new connections), the service stops
accepting runs and cancels the running ones, each writing a ``cancelled`` checkpoint; their
event streams end with the runs, so open connections drain; then uvicorn finishes as usual.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from vibe_planner.cli._commands import UsageError, build_planner
from vibe_planner.cli._serve import TOKEN_ENV, is_loopback

from ._app import create_app
from ._service import PlanService

__all__ = ["run_server"]


class _Server(uvicorn.Server):
    """uvicorn's server, draining the service before it closes connections."""

    def __init__(self, config: uvicorn.Config, service: PlanService) -> None:
        super().__init__(config)
        self._service = service

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"vibe-planner: serving on http://{host}:{port}", file=sys.stderr, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting connections first
        await self._service.drain()
        await super().shutdown(sockets)


def run_server(args: argparse.Namespace) -> int:
    """Serve until a signal; return the exit code."""
    tokens = _tokens(args)
    if not tokens and not args.no_auth:
        raise UsageError(f"no API token: set ${TOKEN_ENV} or --token-file "
                         "(or, on a loopback address only, pass --no-auth)")
    if args.no_auth and not is_loopback(args.host):
        raise UsageError(f"--no-auth is allowed only on a loopback address, not {args.host!r}")
    for name, value in (("--max-running", args.max_running), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    service = PlanService(build_planner(args), state_dir=args.state_dir, resume_on_start=args.resume,
                          max_running=args.max_running, keep_finished=max(args.keep_finished, 0))
    app = create_app(service, tokens=[] if args.no_auth else tokens, max_body_bytes=args.max_body_bytes)
    logging.getLogger("vibe_planner.server").setLevel(logging.INFO)
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", log_level="info",
                            server_header=False, timeout_graceful_shutdown=30)
    _Server(config, service).run()
    return 0


def _tokens(args: argparse.Namespace) -> list[str]:
    if args.token_file:
        try:
            raw = Path(args.token_file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file: {exc.strerror}") from None
    else:
        raw = os.environ.get(TOKEN_ENV, "")
    tokens = [t.strip() for t in raw.replace(",", "\n").splitlines() if t.strip()]
    if any(len(t) < 16 for t in tokens):
        raise UsageError("an API token must be at least 16 characters long")
    return tokens
