"""Shared helpers of the torture suite: the fork server client, folder snapshots, counts.

Nothing here reaches into vibe_planner's internals: the suite damages real files, kills real
processes and injects failures only through the public `CheckpointStore` extension point.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.test_crash import recorded_completed  # the independent on-disk reader
from vibe_planner import CheckpointWriteError, FileCheckpointStore, Vibe

__all__ = [
    "CRASH_WORKER",
    "ROOT",
    "FailingStore",
    "ForkServer",
    "Tally",
    "chain_of",
    "crash_plan_id",
    "log_lines",
    "recorded_completed",
    "tree",
]

ROOT = Path(__file__).resolve().parent.parent.parent
CRASH_WORKER = ROOT / "tests" / "crash_worker.py"


def crash_plan_id(size: int, seed: int) -> str:
    """The plan id `tests/crash_worker.py` (and the race worker) use for a size and seed."""
    return Vibe(description=f"crash test {size} {seed}").default_plan_id()


def log_lines(path: Path, offset: int = 0) -> list[str]:
    """Lines of a side-effect log from byte *offset* on."""
    if not path.exists():
        return []
    return path.read_bytes()[offset:].decode().splitlines()


# -- folder snapshots -----------------------------------------------------------------------------

Entry = tuple[str, bytes | str | None, int]


def tree(root: Path) -> dict[str, Entry]:
    """Every entry under *root* (not following symlinks): kind, bytes or link target, mode.

    Two snapshots compare equal only if nothing was created, deleted, changed or chmod-ed.
    """
    entries: dict[str, Entry] = {}
    if not os.path.lexists(root):
        return entries
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                entries[relative] = ("link", os.readlink(path), mode)
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = ("dir", None, mode)
            elif stat.S_ISREG(info.st_mode):
                entries[relative] = ("file", path.read_bytes(), mode)
            else:
                entries[relative] = ("other", None, mode)
    return entries


def tree_diff(before: dict[str, Entry], after: dict[str, Entry]) -> dict[str, list[str]]:
    """What changed between two `tree` snapshots (for readable assertion messages)."""
    return {
        "deleted": sorted(set(before) - set(after)),
        "created": sorted(set(after) - set(before)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


# -- the checkpoint chain, read independently -----------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One snapshot of a plan's chain, as its file says."""

    sequence: int
    run_id: str
    reason: str
    completed: int


def chain_of(folder: Path) -> list[Link]:
    """The plan's snapshots by sequence; asserts the chain never forked.

    Sequences are unique and strictly increasing with the file names, and each run's
    snapshots form one contiguous range of sequences (two runs never interleave).
    """
    links = []
    for path in sorted(folder.glob("cp-*.json")):
        document = orjson.loads(path.read_bytes())
        assert path.name.startswith(f"cp-{document['sequence']:08d}-"), path
        links.append(
            Link(
                document["sequence"],
                document["run_id"],
                document["reason"],
                # A base lists its completed nodes; a delta records their count.
                len(document["completed_nodes"]) if "completed_nodes" in document
                else document["counts"]["completed"],
            )
        )
    sequences = [link.sequence for link in links]
    assert sequences == sorted(set(sequences)), f"sequence numbers repeat: {sequences}"
    seen_runs: list[str] = []
    for link in links:
        if not seen_runs or seen_runs[-1] != link.run_id:
            assert link.run_id not in seen_runs, (
                f"run {link.run_id} wrote again after another run: the chain forked "
                f"({[(x.sequence, x.run_id) for x in links]})"
            )
            seen_runs.append(link.run_id)
    return links


# -- injected disk failures through the public store extension point ------------------------------


class FailingStore(FileCheckpointStore):
    """A `FileCheckpointStore` whose writes start failing once *fail_from* writes were made.

    ``write_atomic``, ``append`` and ``truncate`` count as writes. Failures raise what
    *make_error* returns (by default a bare ``OSError(ENOSPC)``, as a custom store on a full
    disk would); set ``fail_from`` to ``None`` to heal the "disk".
    """

    def __init__(
        self,
        root: Path,
        fail_from: int | None,
        *,
        make_error: Callable[[Path], OSError] | None = None,
        operations: frozenset[str] = frozenset({"write_atomic", "append", "truncate"}),
    ) -> None:
        super().__init__(root)
        self.fail_from = fail_from
        self.make_error = make_error or (
            lambda path: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        )
        self.operations = operations
        self.writes: list[tuple[str, str]] = []
        self.failures = 0
        self._mutex = threading.Lock()

    def _gate(self, operation: str, plan_id: str, name: str) -> None:
        if operation not in self.operations:
            return
        with self._mutex:
            index = len(self.writes)
            self.writes.append((operation, name))
            failing = self.fail_from is not None and index >= self.fail_from
            if failing:
                self.failures += 1
        if failing:
            raise self.make_error(self.location(plan_id, name))

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        self._gate("write_atomic", plan_id, name)
        super().write_atomic(plan_id, name, data)

    def append(self, plan_id: str, name: str, data: bytes) -> None:
        self._gate("append", plan_id, name)
        super().append(plan_id, name, data)

    def truncate(self, plan_id: str, name: str) -> None:
        self._gate("truncate", plan_id, name)
        super().truncate(plan_id, name)


def enospc_write_error(path: Path) -> OSError:
    """The error the built-in file store raises when the disk is full."""
    return CheckpointWriteError(path, "No space left on device (ENOSPC)", errno_=errno.ENOSPC)


# -- the fork server ------------------------------------------------------------------------------


class ForkServer:
    """Client of `tests/torture/zygote.py`: forks worker processes without re-importing."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert self._proc.stdout is not None
        hello = self._proc.stdout.readline()
        assert hello, "the fork server did not start"
        self.pid = json.loads(hello)["ready"]

    def run(
        self, jobs: list[dict[str, Any]], *, kill_after: float | None, timeout: float = 120
    ) -> list[dict[str, Any]]:
        """Fork every job at once; SIGKILL those still running after *kill_after* seconds.

        Returns one result per job: ``pid``, ``returncode`` (``-9`` when killed), ``killed``
        and ``timed_out`` (killed because *timeout* passed: the worker hung).
        """
        assert self._proc.stdin is not None and self._proc.stdout is not None
        request = {"jobs": jobs, "kill_after": kill_after, "timeout": timeout}
        self._proc.stdin.write(json.dumps(request).encode() + b"\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline()
        assert answer, "the fork server died"
        results: list[dict[str, Any]] = json.loads(answer)["results"]
        return results

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


# -- counts for the report -------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts the suite prints at the end of a run (kills survived, offsets tried, ...)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] += amount

    def lines(self) -> list[str]:
        return [f"{key}: {value}" for key, value in sorted(self.counts.items())]


TALLY = Tally()
