"""A real PostgreSQL server for the tests, started by the suite itself.

`server()` starts one per test process on first use (initdb into a temporary folder, a free
loopback port, password authentication) and `stop()` (called at session end by conftest)
removes it. Debian keeps the server's programs in /usr/lib/postgresql/<version>/bin, off the
PATH; they are looked for there too. PostgreSQL refuses to run as root, so when the suite runs
as root (CI does) the server runs as ``nobody`` in a folder that user owns.

Nothing is skipped: if the server cannot start, `server()` raises with the reason and the
server's log, and every test that needs it fails with that message.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "close_stores", "fresh_schema", "pg_store", "server", "stop"]

_USER = "vibe"
_DATABASE = "vibe"
_RUN_AS = "nobody"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise RuntimeError(
        f"PostgreSQL's {name!r} was found neither on PATH nor in /usr/lib/postgresql/*/bin: "
        "install Debian's postgresql package (bash scripts/system-deps.sh does, as root)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server: `url` (with the password) connects to its database."""

    folder: Path
    port: int
    password: str
    run_as: str | None
    stores: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql://{_USER}:{self.password}@127.0.0.1:{self.port}/{_DATABASE}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            _run(self.run_as, [_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(run_as: str | None, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    extra: dict[str, Any] = {}
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120,
                          cwd="/", **extra, **kwargs)


def start() -> PostgresServer:
    """Create and start a new server (see the module docstring)."""
    run_as = _RUN_AS if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="vibe-pg-"))
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    password = secrets.token_urlsafe(18)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if run_as is not None:
        os.chown(pwfile, pwd.getpwnam(run_as).pw_uid, -1)
    server = PostgresServer(folder, 0, password, run_as)
    try:
        _run(run_as, [_binary("initdb"), "-D", str(server.data), "-U", _USER, "--pwfile", str(pwfile),
                      "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"])
        pwfile.unlink()
        _start_on_a_free_port(server)
        _run(run_as, [_binary("psql"), "-d", f"postgresql://{_USER}@127.0.0.1:{server.port}/postgres",
                      "-c", f"CREATE DATABASE {_DATABASE}"], env={**os.environ, "PGPASSWORD": password})
    except subprocess.CalledProcessError as exc:
        log = _log_tail(server)
        server.stop()
        raise RuntimeError(f"the test PostgreSQL server could not start: {exc.cmd[0]} said: "
                           f"{exc.stderr.strip() or exc.stdout.strip()}\n{log}") from None
    return server


def _start_on_a_free_port(server: PostgresServer) -> None:
    options = ("-c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
               "-c shared_buffers=32MB")
    for attempt in range(5):  # the port may be taken between choosing it and binding it
        server.port = _free_port()
        try:
            _run(server.run_as, [_binary("pg_ctl"), "-D", str(server.data), "-l",
                                 str(server.folder / "log"), "-w", "-t", "90",
                                 "-o", f"-p {server.port} {options}", "start"])
            return
        except subprocess.CalledProcessError:
            if attempt == 4 or "already in use" not in _log_tail(server):
                raise


def _log_tail(server: PostgresServer) -> str:
    try:
        return "server log:\n" + "\n".join((server.folder / "log").read_text().splitlines()[-15:])
    except OSError:
        return "(no server log)"


_lock = threading.Lock()
_server: PostgresServer | None = None
_failure: str | None = None


def server() -> PostgresServer:
    """Return the test process's server, starting it on first use."""
    global _server, _failure
    with _lock:
        if _failure is not None:
            raise RuntimeError(_failure)
        if _server is None:
            try:
                _server = start()
            except RuntimeError as exc:
                _failure = str(exc)
                raise
        return _server


def stop() -> None:
    """Stop the server if it was started (session end)."""
    global _server
    with _lock:
        if _server is not None:
            close_stores()
            _server.stop()
            _server = None


def fresh_schema() -> str:
    """Return the name of a schema nobody used yet (each store of a test gets its own)."""
    return "t_" + secrets.token_hex(6)


def pg_store(**options: Any) -> Any:
    """Return a `PostgresCheckpointStore` on an empty schema of the test server.

    Stores made this way are closed after each test (see `close_stores`).
    """
    from vibe_planner import PostgresCheckpointStore

    running = server()
    store = PostgresCheckpointStore(running.url, schema=fresh_schema(), **options)
    running.stores.append(store)
    return store


def close_stores() -> None:
    """Close the stores `pg_store` made (their connection pools), outside any event loop."""
    if _server is None:
        return
    stores, _server.stores = _server.stores, []
    for store in stores:
        store.close()
