"""The per-plan run lock: one process at a time runs a given plan.

The lock is an ``flock`` on ``<plan folder>/.lock``. The kernel drops it when its holder dies,
SIGKILL included, so a stale lock of a dead process is taken over without guessing from pids.
The file also says who holds it (pid, host) so the error can tell the user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from .._exceptions import CheckpointWriteError, PlanLockedError

__all__ = ["PlanLock"]


class PlanLock:
    """A held plan lock; `release` it when the run ends."""

    def __init__(self, plan_id: str, path: Path, fd: int) -> None:
        self.plan_id = plan_id
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, plan_id: str, path: Path) -> PlanLock:
        """Take the lock without waiting, or raise `PlanLockedError` naming the holder."""
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise CheckpointWriteError(path, f"cannot open lock file: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CheckpointWriteError(path, "the lock file is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise PlanLockedError(plan_id, path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        return cls(plan_id, path, fd)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str | None:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None
