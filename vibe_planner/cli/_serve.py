"""The ``serve`` command's options; the server itself lives in `vibe_planner.server` (extra)."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable

from ._commands import UsageError

__all__ = ["TOKEN_ENV", "add_serve_options", "is_loopback", "serve_command"]

TOKEN_ENV = "VIBE_PLANNER_TOKEN"
"""The API's bearer token (several: separated by commas). Never given on the command line."""


def add_serve_options(
    parser: argparse.ArgumentParser, run_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add the options of ``vibe-planner serve`` (*run_options* adds those of every run)."""
    run_options(parser)  # --checkpoint-interval, --concurrency, ... (--json is ignored here)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free one)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without a token (refused unless --host is a loopback address)")
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"read the bearer token from this file (default: ${TOKEN_ENV})")
    parser.add_argument("--state-dir", metavar="DIR", default=".vibe_server",
                        help="where the server notes which plans run (default: .vibe_server)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="do not resume the plans that were running when the server last stopped")
    parser.add_argument("--max-running", metavar="N", type=int, default=64,
                        help="most plans running at once; more wait as queued (default: 64)")
    parser.add_argument("--max-body-bytes", metavar="N", type=int, default=1 << 20,
                        help="largest request body accepted (default: 1 MiB)")
    parser.add_argument("--keep-finished", metavar="N", type=int, default=100,
                        help="finished plans whose events stay replayable in memory (default: 100)")


def is_loopback(host: str) -> bool:
    """Whether *host* is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(args: argparse.Namespace) -> int:
    """``vibe-planner serve``: the HTTP API and the dashboard, until SIGTERM or Ctrl-C."""
    if args.no_auth and not is_loopback(args.host):
        raise UsageError(f"--no-auth is allowed only on a loopback address, not {args.host!r}")
    try:
        from vibe_planner.server._serve import run_server
    except ImportError as exc:
        raise UsageError(f"'vibe-planner serve' needs the server extra ({exc.name} is missing): "
                         "pip install 'vibe-planner[server]'") from None
    return run_server(args)
