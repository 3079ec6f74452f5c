"""The per-plan run lock: one process at a time runs a given plan.

The lock is an ``flock`` on ``<plan folder>/.lock``. The kernel drops it when its holder dies,
SIGKILL included, so a stale lock of a dead process is taken over without guessing from pids.
The file also says who holds it (pid, host) so the error can tell the user.

The classic lock-file protocol guards against a concurrent delete: deleting a plan renames its
folder away (lock file included) while holding the lock, so a process that opened the old
file, or got its flock after the delete released it, would hold a lock nobody else can see.
After flock succeeds, the path must therefore still name the very file that was locked
(``st_dev``/``st_ino`` of the descriptor and of the path); if not, the attempt is dropped and
made again on whatever the path names now.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from .._exceptions import CheckpointWriteError, PlanLockedError

__all__ = ["PlanLock"]

# Each failed attempt means a delete renamed the folder away within microseconds of this
# process opening the lock file; several in a row mean someone deletes the plan in a loop.
_ATTEMPTS = 20
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class PlanLock:
    """A held plan lock; `release` it when the run ends."""

    def __init__(self, plan_id: str, path: Path, fd: int) -> None:
        self.plan_id = plan_id
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(
        cls, plan_id: str, path: Path, *, prepare: Callable[[], None] | None = None
    ) -> PlanLock:
        """Take the lock without waiting, or raise `PlanLockedError` naming the holder.

        The lock file is created (mode 0600) if needed. *prepare* runs before each attempt
        (the store passes one that creates the plan folder, which a delete may have removed).
        """
        for _ in range(_ATTEMPTS):
            if prepare is not None:
                prepare()
            fd = _open(path)
            if fd is None:
                continue  # the folder was renamed away between prepare() and open()
            try:
                locked = _flock(fd)
                if not _still_names(path, fd):
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = _read_holder(fd)
                os.close(fd)
                raise PlanLockedError(plan_id, path, holder)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
            return cls(plan_id, path, fd)
        raise PlanLockedError(plan_id, path, "a process deleting the plan over and over")

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


def _open(path: Path) -> int | None:
    """Open (or create) a lock file; ``None`` if its folder does not exist."""
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointWriteError(path, f"cannot open lock file: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointWriteError(path, "the lock file is not a regular file")
        if stat.S_IMODE(info.st_mode) != 0o600 and info.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)  # the umask may have taken bits from the mode asked for
    except BaseException:
        os.close(fd)
        raise
    return fd


def _flock(fd: int) -> bool:
    """Lock *fd* without waiting; ``False`` if another open file holds the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_names(path: Path, fd: int) -> bool:
    """Whether *path* still names the file open as *fd* (a delete may have moved it away)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CheckpointWriteError(path, f"cannot check lock file: {exc.strerror}") from exc
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_holder(fd: int) -> str | None:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None
