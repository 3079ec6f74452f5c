"""What a child process measures: the shared node body, loop lag, bytes written, peak RSS."""

from __future__ import annotations

import functools
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from .workloads import Workload

__all__ = [
    "LoopLagProbe",
    "NodeBody",
    "OnLoopTimer",
    "bare_chain",
    "bytes_written",
    "cpu_seconds",
    "environment",
    "folder_stats",
    "peak_rss_mb",
]


class NodeBody:
    """The body every system runs for every node: sleep the node's latency, return its output.

    It also records what a benchmark needs to know from inside: when the first node started,
    which nodes ran, and (for the resume workload) appends each finished node's id to a
    side-effect log, unbuffered, the way a real side effect would reach the outside world.
    """

    def __init__(self, workload: Workload, log_path: Path | None = None) -> None:
        self._latency = {node.id: node.latency for node in workload.nodes}
        self._padding = max(0, workload.output_bytes)
        self._log = open(log_path, "ab", buffering=0) if log_path else None  # noqa: SIM115
        self.first_start: float | None = None
        """`time.perf_counter()` when the first node body started."""
        self.ran: list[str] = []
        """Ids of the nodes whose body finished, in order (a node run twice appears twice)."""

    async def __call__(self, node_id: str) -> str:
        """Run one node: the work is a sleep; the output is a string of the workload's size."""
        if self.first_start is None:
            self.first_start = time.perf_counter()
        latency = self._latency[node_id]
        if latency > 0:
            await anyio.sleep(latency)
        if self._log is not None:
            self._log.write(f"{node_id}\n".encode())
        self.ran.append(node_id)
        if self._padding:
            return node_id.ljust(self._padding, ".")
        return node_id

    def close(self) -> None:
        """Close the side-effect log."""
        if self._log is not None:
            self._log.close()


async def bare_chain(workload: Workload) -> float:
    """Seconds to sleep the workload's critical chain one sleep after another, nothing else.

    The lower bound this machine can reach: the critical path plus the event loop's timer
    lateness, with no orchestrator at all.
    """
    start = time.perf_counter()
    for latency in workload.critical_chain():
        await anyio.sleep(latency)
    return time.perf_counter() - start


class LoopLagProbe:
    """A ticker task that measures how late the event loop wakes it.

    It sleeps *tick* seconds in a loop; each wake-up later than asked means the loop was busy
    (running callbacks or blocked in a call) for that long. The maximum is the longest time a
    ready task had to wait: an upper bound on the longest single blocking stretch, whatever
    caused it (checkpoint writes, scheduling, the node bodies themselves).
    """

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self.max_lag = 0.0
        self.ticks = 0
        self.over_5ms = 0
        self.total_lag_over_1ms = 0.0

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            start = time.perf_counter()
            await anyio.sleep(self.tick)
            lag = time.perf_counter() - start - self.tick
            self.ticks += 1
            self.max_lag = max(self.max_lag, lag)
            if lag > 0.005:
                self.over_5ms += 1
            if lag > 0.001:
                self.total_lag_over_1ms += lag

    def results(self) -> dict[str, Any]:
        """The probe's figures, in milliseconds."""
        return {
            "loop_lag_max_ms": self.max_lag * 1e3,
            "loop_lag_over_5ms": self.over_5ms,
            "loop_lag_total_over_1ms_ms": self.total_lag_over_1ms * 1e3,
            "loop_lag_ticks": self.ticks,
        }


class OnLoopTimer:
    """Times calls of one function made on the event loop's thread (calls elsewhere pass through).

    Used to time a peer's checkpoint serialisation or write where it happens synchronously on
    the loop: every such call blocks the loop for its whole duration.
    """

    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.calls = 0
        self.max = 0.0
        self.total = 0.0
        self.bytes = 0
        self.largest = 0

    def wrap(self, func: Callable[..., Any], *, measure_bytes: bool = False) -> Callable[..., Any]:
        """Return *func* wrapped so that calls on the loop thread are timed."""

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.loop_thread:
                return func(*args, **kwargs)
            start = time.perf_counter()
            result = func(*args, **kwargs)
            elapsed = time.perf_counter() - start
            self.calls += 1
            self.total += elapsed
            self.max = max(self.max, elapsed)
            if measure_bytes and isinstance(result, tuple) and len(result) == 2:
                payload = result[1]
                if isinstance(payload, bytes | bytearray):
                    self.bytes += len(payload)
                    self.largest = max(self.largest, len(payload))
            return result

        return timed

    def results(self, prefix: str) -> dict[str, Any]:
        """The timer's figures under *prefix*, in milliseconds."""
        figures: dict[str, Any] = {
            f"{prefix}_calls": self.calls,
            f"{prefix}_max_ms": self.max * 1e3,
            f"{prefix}_total_ms": self.total * 1e3,
        }
        if self.bytes:
            figures[f"{prefix}_bytes"] = self.bytes
            figures[f"{prefix}_largest"] = self.largest
        return figures


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bytes_written() -> int | None:
    """Bytes this process has passed to write-like system calls (``wchar``), if the OS says."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return None


def folder_stats(folder: Path, suffix: str = "") -> dict[str, int]:
    """Number, total size and largest size of the files under *folder* ending with *suffix*."""
    sizes = [
        entry.stat().st_size
        for entry in (folder.rglob("*") if folder.exists() else [])
        if entry.is_file() and entry.name.endswith(suffix)
    ]
    return {"files": len(sizes), "bytes": sum(sizes), "largest": max(sizes, default=0)}


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def environment() -> dict[str, Any]:
    """What the machine is, for the results files."""
    return {"cpus": os.cpu_count(), "platform": os.uname().sysname + " " + os.uname().release}
