"""Disk primitives of the file store: durable writes, private folders, refusal of unsafe files.

These are plain functions over paths and descriptors, run in worker threads (never on the
loop) by `CheckpointFolder`. Durability: data is fsynced before a rename publishes it, and the
folder is fsynced after an entry is created, renamed or removed. Files are 0600 and folders
0700 whatever the umask. A file or folder that belongs to another user (root excepted) or is
writable by group or others is refused (`UnsafeCheckpointFolderError`): whoever can write
there can plant the state a resume would trust.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .._exceptions import CheckpointWriteError, UnsafeCheckpointFolderError

__all__ = [
    "CLOEXEC",
    "DIR_MODE",
    "FILE_MODE",
    "NOFOLLOW",
    "NONBLOCK",
    "describe_open_error",
    "fsync_dir",
    "make_private_dir",
    "os_reason",
    "refuse_unsafe",
    "remove_tombstone",
    "require_regular",
    "write_all",
]

FILE_MODE = 0o600
DIR_MODE = 0o700
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted where a file should be must fail fast, not hang; it has no
# effect on regular files, and anything that is not one is refused right after opening.
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def refuse_unsafe(path: Path, info: os.stat_result, what: str) -> None:
    """Raise `UnsafeCheckpointFolderError` if someone else could have written *path*."""
    euid = os.geteuid()
    if info.st_uid not in (euid, 0):
        raise UnsafeCheckpointFolderError(
            path, f"{what} is owned by uid {info.st_uid}, not by this user (uid {euid}) or root")
    if info.st_mode & 0o022:
        who = {0o020: "group", 0o002: "others"}.get(info.st_mode & 0o022, "group and others")
        raise UnsafeCheckpointFolderError(
            path, f"{what} is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}); "
            "run chmod go-w on it if you trust its contents")


def remove_tombstone(tombstone: Path) -> None:
    try:
        names = os.listdir(tombstone)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CheckpointWriteError(tombstone, os_reason(exc), errno_=exc.errno) from exc
    for name in names:
        try:
            os.unlink(tombstone / name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CheckpointWriteError(tombstone / name, os_reason(exc), errno_=exc.errno) from exc
    try:
        os.rmdir(tombstone)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CheckpointWriteError(tombstone, os_reason(exc), errno_=exc.errno) from exc


def make_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return  # renamed away by a delete meanwhile: opening a file in it will say so
        if not stat.S_ISDIR(info.st_mode):
            raise CheckpointWriteError(path, "exists but is not a plain folder") from None
        return
    except OSError as exc:
        raise CheckpointWriteError(path, os_reason(exc), errno_=exc.errno) from exc
    try:
        os.chmod(path, DIR_MODE)  # whatever the umask took away
    except FileNotFoundError:
        return  # renamed away by a delete meanwhile (see above)
    except OSError as exc:
        raise CheckpointWriteError(path, os_reason(exc), errno_=exc.errno) from exc
    if path.parent.exists():
        fsync_dir(path.parent)


def require_regular(fd: int, path: Path) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, f"{path} is not a regular file")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems refuse fsync on folders; the rename is still atomic there.
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def os_reason(exc: OSError) -> str:
    if exc.errno is not None:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)


def describe_open_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink; refusing to follow it"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a file"
    return os_reason(exc)
