"""A real ``vibe-planner serve`` in a subprocess on loopback, and an SSE reader, for the tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

SCRIPT = Path(sys.executable).parent / "vibe-planner"
TOKEN = "test-token-" + "q7Zr2xWm9Lp4Kd8N"


class ServerProcess:
    """``vibe-planner serve --port 0`` started in *cwd*; `url` is known once it listens."""

    def __init__(self, cwd: Path, *args: str, token: str | None = TOKEN, delay: float = 0.0,
                 env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        environment = {**os.environ, "VIBE_PLANNER_OFFLINE_DELAY": str(delay), **(env or {})}
        environment.pop("VIBE_PLANNER_TOKEN", None)
        if token is not None:
            environment["VIBE_PLANNER_TOKEN"] = token
        self.token = token
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self.process = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", "0", *args], cwd=cwd, env=environment,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(120) or not self.url:
            self.kill()
            raise RuntimeError("the server did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            found = re.search(r"serving on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()  # ended before it listened

    @property
    def log(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.lines)

    def client(self, *, token: str | None = TOKEN, **kwargs: Any) -> httpx.Client:
        """An httpx client for the server (with the bearer token unless *token* is None)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def terminate(self) -> int:
        """Send SIGTERM and wait for the process to end; return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL the server if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._close()

    def _close(self) -> None:
        self._reader.join(30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse a Server-Sent Events response: each event's ``id``, ``event`` and decoded ``data``."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def stream(client: httpx.Client, plan_id: str, last_event_id: str | None = None) -> list[dict[str, Any]]:
    """Read a plan's event stream to its end."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/plans/{plan_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        return list(sse_events(response))


def wait_for(client: httpx.Client, plan_id: str, kinds: Sequence[str],
             last_event_id: str | None = None) -> dict[str, Any]:
    """Follow a plan's stream (after *last_event_id*) until an event of one of *kinds*; return it."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/plans/{plan_id}/events", headers=headers) as response:
        for event in sse_events(response):
            if event["event"] in kinds:
                return event
    raise AssertionError(f"the stream of {plan_id} ended without any of {kinds}")
