"""`FileCheckpointStore`: checkpoints as files in a local folder.

The file layout is::

    <root>/<plan_id>/cp-<sequence>-<suffix>.json     a snapshot (checkpoint document)
    <root>/<plan_id>/journal-<run_id>.jsonl         completions since the run's last snapshot
    <root>/<plan_id>/.lock                          held (flock) by the process running the plan
    <root>/.<plan_id>.deleting-<hex>/               a plan folder being deleted (a tombstone)

Every async method of the `CheckpointStore` protocol makes one worker-thread hop
(`anyio.to_thread.run_sync`) in which it calls the synchronous primitives below (`read`,
`write_atomic`, `append`, `truncate`, `delete`, `lock`...). Those are public so a subclass can
wrap them (to count writes, inject faults); they run in worker threads, never on the loop.

Writes are crash-safe: a temp file in the same folder, fsync, `os.replace`, fsync of the
folder. Files are created 0600 and folders 0700 whatever the umask (modes are set after
creation). Like ssh with its keys, the store refuses (`UnsafeCheckpointFolderError`) to run a
plan or read a checkpoint when the root, the plan folder or a file in it belongs to another
user (root excepted) or is writable by group or others: whoever can write there can plant the
state a resume would trust.

The lease is an flock on ``.lock`` (see `PlanLock`): the kernel drops it when its holder dies.
Its fencing token is ``max(time.time_ns(), previous token + 1)``: strictly growing within a
process, and growing across processes as long as the wall clock does not step back. The
flock, not the token, is what keeps two writers apart here; the token is for stores whose
leases can expire.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    PlanLockedError,
    UnsafeCheckpointFolderError,
)
from .._ids import CHECKPOINT_ID, check_plan_id, checkpoint_sequence
from ._lock import PlanLock
from ._store import CheckpointStore, Latest, Lease, Stored, WriteBatch, journal_name

__all__ = ["FileCheckpointStore"]

_T = TypeVar("_T")
_J = TypeVar("_J")
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted where a file should be must fail fast, not hang; it has no
# effect on regular files, and anything that is not one is refused right after opening.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# A deleted plan's folder is first renamed to this (not a valid plan id, so never listed).
_DELETING = ".deleting-"
_TOMBSTONE_SUFFIX = re.compile(r"[0-9a-f]{12}")
_JOURNAL_PREFIX, _JOURNAL_SUFFIX = "journal-", ".jsonl"
_ITEM_ERRORS = (CheckpointCorruptError, UnsafeCheckpointFolderError)

_token_mutex = threading.Lock()
_last_token = 0


def _next_token() -> int:
    global _last_token
    with _token_mutex:
        _last_token = max(time.time_ns(), _last_token + 1)
        return _last_token


class FileCheckpointStore(CheckpointStore):
    """Checkpoints as files: owner-only, crash-safe (temp + fsync + rename + fsync folder).

    Args:
        root: The checkpoint folder, created (mode 0700) on first write.

    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FileCheckpointStore({str(self.root)!r})"

    def describe(self, plan_id: str, name: str | None = None) -> str:
        return str(self.location(plan_id, name))

    # -- the protocol: one worker-thread hop per call ------------------------------------------
    async def plan_ids(self) -> list[str]:
        return await anyio.to_thread.run_sync(self.list_plans)

    async def checkpoint_ids(self, plan_id: str) -> list[str]:
        return await anyio.to_thread.run_sync(self.list_checkpoints, plan_id)

    async def find_plans(self, checkpoint_id: str) -> list[str]:
        def find() -> list[str]:
            return [p for p in self.list_plans() if checkpoint_id in self.list_checkpoints(p)]

        return await anyio.to_thread.run_sync(find)

    async def read_checkpoint(self, plan_id: str, checkpoint_id: str, parse: Callable[[bytes], _T]) -> _T:
        return await anyio.to_thread.run_sync(lambda: parse(self.read(plan_id, checkpoint_id + ".json")))

    async def read_checkpoints(self, plan_id: str, parse: Callable[[str, bytes], _T]) -> list[Stored[_T]]:
        def read_all() -> list[Stored[_T]]:
            found = []
            for checkpoint_id in self.list_checkpoints(plan_id):
                item = self._read_item(plan_id, checkpoint_id, checkpoint_id + ".json", parse)
                if item is not None:
                    found.append(item)
            return found

        return await anyio.to_thread.run_sync(read_all)

    async def read_journals(self, plan_id: str, parse: Callable[[str, bytes], _J]) -> list[Stored[_J]]:
        return await anyio.to_thread.run_sync(self._read_journals, plan_id, parse)

    async def read_many(
        self, plan_id: str, checkpoint_ids: Sequence[str], parse: Callable[[str, bytes], _T]
    ) -> list[Stored[_T]]:
        def read_all() -> list[Stored[_T]]:
            items = (self._read_item(plan_id, i, i + ".json", parse) for i in checkpoint_ids)
            return [item for item in items if item is not None]

        return await anyio.to_thread.run_sync(read_all)

    async def read_latest(
        self,
        plan_id: str,
        parse: Callable[[str, bytes], _T],
        parse_journal: Callable[[str, bytes], _J] | None = None,
    ) -> Latest[_T, _J] | None:
        def read() -> Latest[_T, _J] | None:
            # Another process may prune the newest file between listing and reading: list again.
            for _ in range(10):
                ids = self.list_checkpoints(plan_id)
                if not ids:
                    return None
                newest = max(ids, key=checkpoint_sequence)
                try:
                    checkpoint = parse(newest, self.read(plan_id, newest + ".json"))
                except CheckpointNotFoundError:
                    continue
                journals = [] if parse_journal is None else self._read_journals(plan_id, parse_journal)
                return Latest(newest, checkpoint, journals)
            raise CheckpointError(f"checkpoints of plan {plan_id!r} keep vanishing while being read")

        return await anyio.to_thread.run_sync(read)

    async def acquire_lease(self, plan_id: str) -> Lease:
        check_plan_id(plan_id)
        # Shielded: a lock taken by a thread whose caller was cancelled meanwhile must be
        # released, not leaked with its descriptor.
        with anyio.CancelScope(shield=True):
            lock = await anyio.to_thread.run_sync(self.lock, plan_id)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lock.release)
            raise
        holder = f"pid={os.getpid()} host={socket.gethostname()}"
        return Lease(plan_id, _next_token(), holder, lock)

    async def renew_lease(self, lease: Lease) -> Lease:
        self._check_lease(lease)  # an flock lasts as long as its holder: nothing to extend
        return lease

    async def release_lease(self, lease: Lease) -> None:
        if isinstance(lease.handle, PlanLock) and lease.handle.held:
            await anyio.to_thread.run_sync(lease.handle.release)

    async def commit(self, lease: Lease, batch: WriteBatch) -> None:
        self._check_lease(lease)
        await anyio.to_thread.run_sync(self.apply, lease.plan_id, batch)

    async def delete_checkpoint(self, plan_id: str, checkpoint_id: str) -> None:
        def delete() -> None:
            if checkpoint_id not in self.list_checkpoints(plan_id):
                raise CheckpointNotFoundError(checkpoint_id, plan_id)
            self.delete(plan_id, checkpoint_id + ".json")

        await anyio.to_thread.run_sync(delete)

    async def prune(self, plan_id: str, checkpoint_ids: Sequence[str], run_ids: Sequence[str]) -> None:
        def prune() -> None:
            for checkpoint_id in checkpoint_ids:
                self.delete(plan_id, checkpoint_id + ".json")
            for run_id in run_ids:
                self.delete(plan_id, journal_name(run_id))

        await anyio.to_thread.run_sync(prune)

    async def delete_plan(self, lease: Lease) -> None:
        self._check_lease(lease)
        await anyio.to_thread.run_sync(self.remove_plan, lease.plan_id)

    # -- synchronous primitives (worker threads) -----------------------------------------------
    def apply(self, plan_id: str, batch: WriteBatch) -> None:
        """Apply a `WriteBatch` in order, each step durable before the next (worker thread)."""
        journal = journal_name(batch.run_id)
        data = batch.journal() if callable(batch.journal) else batch.journal
        if data:
            self.append(plan_id, journal, data)
        if batch.snapshot is not None:
            snapshot = batch.snapshot
            self.write_atomic(plan_id, snapshot.checkpoint_id + ".json", snapshot.encode())
        if batch.truncate_journal:
            self.truncate(plan_id, journal)
        for checkpoint_id in batch.delete_checkpoints:
            self.delete(plan_id, checkpoint_id + ".json")
        for run_id in batch.delete_journals:
            self.delete(plan_id, journal_name(run_id))

    def location(self, plan_id: str, name: str | None = None) -> Path:
        """Return the path of a plan folder or of a file in it."""
        folder = self.root / plan_id
        return folder if name is None else folder / name

    def list_plans(self) -> list[str]:
        """Return the ids of plans that have a folder, sorted."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and _is_plan(e.name))

    def list_checkpoints(self, plan_id: str) -> list[str]:
        """Return the checkpoint ids of a plan, in no particular order."""
        names = self.list_names(plan_id, "cp-")
        return [n[:-5] for n in names if n.endswith(".json") and CHECKPOINT_ID.fullmatch(n[:-5])]

    def list_names(self, plan_id: str, prefix: str) -> list[str]:
        """Return file names of a plan folder starting with *prefix*."""
        try:
            return [n for n in os.listdir(self._folder(plan_id)) if n.startswith(prefix)]
        except FileNotFoundError:
            return []

    def read(self, plan_id: str, name: str) -> bytes:
        """Return a file's bytes; `CheckpointNotFoundError` if absent.

        Raises `UnsafeCheckpointFolderError` if someone else could have written the file.
        """
        path = self.location(plan_id, name)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
        except FileNotFoundError:
            raise CheckpointNotFoundError(_strip_json(name), plan_id) from None
        except OSError as exc:
            raise CheckpointCorruptError(path, _describe_open_error(path, exc)) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise CheckpointCorruptError(path, "is a directory, not a file")
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointCorruptError(path, "not a regular file")
            self._refuse_unsafe_folders(plan_id)
            _refuse_unsafe(path, info, "the file")
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def size(self, plan_id: str, name: str) -> int:
        """Return a file's size in bytes (0 if absent)."""
        try:
            return os.lstat(self.location(plan_id, name)).st_size
        except FileNotFoundError:
            return 0

    def write_atomic(self, plan_id: str, name: str, data: bytes) -> None:
        """Create a new file with *data* so that it is either absent or complete after a crash."""
        folder = self._folder(plan_id, create=True)
        final = folder / name
        temp = folder / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, _FILE_MODE)
            try:
                os.fchmod(fd, _FILE_MODE)  # whatever the umask took away
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, "a checkpoint with this name already exists")
            os.replace(temp, final)
            _fsync_dir(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise CheckpointWriteError(final, _os_reason(exc), errno_=exc.errno) from exc

    def append(self, plan_id: str, name: str, data: bytes) -> None:
        """Append *data* to a file durably (creating it if needed)."""
        folder = self._folder(plan_id, create=True)
        path = folder / name
        created = not os.path.lexists(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
        try:
            fd = os.open(path, flags, _FILE_MODE)
            try:
                _require_regular(fd, path)
                if created:
                    os.fchmod(fd, _FILE_MODE)  # whatever the umask took away
                _write_all(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(folder)
        except OSError as exc:
            raise CheckpointWriteError(path, _os_reason(exc), errno_=exc.errno) from exc

    def truncate(self, plan_id: str, name: str) -> None:
        """Empty a file durably if it exists."""
        path = self.location(plan_id, name)
        try:
            fd = os.open(path, os.O_WRONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CheckpointWriteError(path, _os_reason(exc), errno_=exc.errno) from exc
        try:
            _require_regular(fd, path)
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError as exc:
            raise CheckpointWriteError(path, _os_reason(exc), errno_=exc.errno) from exc
        finally:
            os.close(fd)

    def delete(self, plan_id: str, name: str) -> None:
        """Delete a file durably; missing files are fine."""
        path = self.location(plan_id, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CheckpointWriteError(path, _os_reason(exc), errno_=exc.errno) from exc
        _fsync_dir(path.parent)

    def remove_plan(self, plan_id: str) -> None:
        """Delete a plan's folder: rename it to a tombstone at once, then empty and remove that.

        The caller holds the plan's lock. The rename is atomic, so a run starting meanwhile sees
        either the old folder (and the held lock: `PlanLockedError`) or no folder (and starts a
        fresh one); nobody ever sees half a folder. Tombstones left by a crash are removed by
        the next `remove_plan` or `lock`.
        """
        folder = self._folder(plan_id)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            names = None
        except OSError as exc:
            raise CheckpointWriteError(folder, _os_reason(exc), errno_=exc.errno) from exc
        if names is not None:
            for name in names:
                path = folder / name
                if os.path.isdir(path) and not os.path.islink(path):
                    raise CheckpointWriteError(path, "unexpected folder inside a plan folder; not deleted")
            tombstone = self.root / f".{plan_id}{_DELETING}{secrets.token_hex(6)}"
            try:
                os.rename(folder, tombstone)
            except OSError as exc:
                raise CheckpointWriteError(folder, _os_reason(exc), errno_=exc.errno) from exc
            _fsync_dir(self.root)
            _remove_tombstone(tombstone)
        self._sweep_tombstones(None)

    def lock(self, plan_id: str) -> PlanLock:
        """Take the plan's flock without waiting, or raise `PlanLockedError`.

        Raises `UnsafeCheckpointFolderError` if someone else could have written the plan.
        """
        folder = self.location(check_plan_id(plan_id))
        lock = PlanLock.acquire(plan_id, folder / ".lock", prepare=lambda: self._make_folder(plan_id))
        try:
            self._refuse_unsafe_folders(plan_id)
            self._refuse_unsafe_files(folder)
        except BaseException:
            lock.release()
            raise
        self._remove_stale_temps(folder)
        self._sweep_tombstones(plan_id)
        return lock

    def _check_lease(self, lease: Lease) -> None:
        lock = lease.handle
        if not isinstance(lock, PlanLock) or not lock.held or lock.plan_id != lease.plan_id:
            check_plan_id(lease.plan_id)
            raise PlanLockedError(lease.plan_id, self.location(lease.plan_id, ".lock"),
                                  "nobody: this lease was released or is not this store's")
        if lock.path != self.location(lease.plan_id, ".lock"):
            raise PlanLockedError(lease.plan_id, lock.path, "a lease of another store")

    def _read_journals(self, plan_id: str, parse: Callable[[str, bytes], _J]) -> list[Stored[_J]]:
        found = []
        for name in sorted(self.list_names(plan_id, _JOURNAL_PREFIX)):
            if name.endswith(_JOURNAL_SUFFIX):
                run_id = name[len(_JOURNAL_PREFIX) : -len(_JOURNAL_SUFFIX)]
                item = self._read_item(plan_id, run_id, name, parse)
                if item is not None:
                    found.append(item)
        return found

    def _read_item(
        self, plan_id: str, key: str, name: str, parse: Callable[[str, bytes], _T]
    ) -> Stored[_T] | None:
        """Read and parse one file for a bulk read; ``None`` if it was deleted meanwhile."""
        size = self.size(plan_id, name)
        try:
            return Stored(key, size, parse(key, self.read(plan_id, name)))
        except CheckpointNotFoundError:
            return None
        except _ITEM_ERRORS as exc:
            return Stored(key, size, None, exc)

    def _refuse_unsafe_folders(self, plan_id: str) -> None:
        for path, what in ((self.root, "the checkpoint folder"), (self.root / plan_id, "the plan folder")):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise CheckpointCorruptError(path, _os_reason(exc)) from exc
            _refuse_unsafe(path, info, what)

    def _refuse_unsafe_files(self, folder: Path) -> None:
        for name in os.listdir(folder):
            path = folder / name
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                if not stat.S_ISLNK(info.st_mode):  # symlinks are never followed; their mode is moot
                    _refuse_unsafe(path, info, "the file")

    def _make_folder(self, plan_id: str) -> None:
        self._folder(plan_id, create=True)

    def _sweep_tombstones(self, plan_id: str | None) -> None:
        """Remove tombstones (of one plan, or all) that a crashed delete left behind."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            head, sep, suffix = name.rpartition(_DELETING)
            owner = head[1:] if head.startswith(".") and sep else ""
            if (owner == plan_id if plan_id is not None else _is_plan(owner)) \
                    and _TOMBSTONE_SUFFIX.fullmatch(suffix):
                # Nothing writes into a tombstone, so removing one another process is still
                # removing is harmless: each side ignores what the other already unlinked.
                with contextlib.suppress(CheckpointWriteError):
                    _remove_tombstone(self.root / name)

    def _remove_stale_temps(self, folder: Path) -> None:
        # Only the lock holder writes, so a temp file seen under the lock is a crashed write.
        for name in os.listdir(folder):
            if name.startswith(".cp-") and ".tmp-" in name:
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)

    def _folder(self, plan_id: str, *, create: bool = False) -> Path:
        check_plan_id(plan_id)
        folder = self.root / plan_id
        if create:
            _make_private_dir(self.root)
            _make_private_dir(folder)
        elif os.path.islink(folder):
            raise CheckpointCorruptError(folder, "plan folder is a symlink; refusing to follow it")
        return folder



def _is_plan(name: str) -> bool:
    try:
        check_plan_id(name)
    except ValueError:
        return False
    return True


def _strip_json(name: str) -> str:
    return name[:-5] if name.endswith(".json") else name


def _refuse_unsafe(path: Path, info: os.stat_result, what: str) -> None:
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


def _remove_tombstone(tombstone: Path) -> None:
    try:
        names = os.listdir(tombstone)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CheckpointWriteError(tombstone, _os_reason(exc), errno_=exc.errno) from exc
    for name in names:
        try:
            os.unlink(tombstone / name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CheckpointWriteError(tombstone / name, _os_reason(exc), errno_=exc.errno) from exc
    try:
        os.rmdir(tombstone)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CheckpointWriteError(tombstone, _os_reason(exc), errno_=exc.errno) from exc


def _make_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return  # renamed away by a delete meanwhile: opening a file in it will say so
        if not stat.S_ISDIR(info.st_mode):
            raise CheckpointWriteError(path, "exists but is not a plain folder") from None
        return
    except OSError as exc:
        raise CheckpointWriteError(path, _os_reason(exc), errno_=exc.errno) from exc
    try:
        os.chmod(path, _DIR_MODE)  # whatever the umask took away
    except FileNotFoundError:
        return  # renamed away by a delete meanwhile (see above)
    except OSError as exc:
        raise CheckpointWriteError(path, _os_reason(exc), errno_=exc.errno) from exc
    if path.parent.exists():
        _fsync_dir(path.parent)


def _require_regular(fd: int, path: Path) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, f"{path} is not a regular file")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
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


def _os_reason(exc: OSError) -> str:
    if exc.errno is not None:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)


def _describe_open_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink; refusing to follow it"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a file"
    return _os_reason(exc)
