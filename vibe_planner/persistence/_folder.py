"""`CheckpointFolder`: the file store's synchronous primitives over one checkpoint folder.

The file layout is::

    <root>/<plan_id>/cp-<sequence>-<suffix>.json     a snapshot (checkpoint document)
    <root>/<plan_id>/journal-<run_id>.jsonl         completions since the run's last snapshot
    <root>/<plan_id>/.lock                          held (flock) by the process running the plan
    <root>/.<plan_id>.deleting-<hex>/               a plan folder being deleted (a tombstone)

Each method here blocks on the disk and runs in a worker thread, never on the loop:
`FileCheckpointStore` (which inherits them) calls them from its one thread hop per call. They
are public so a subclass of the store can wrap them (to count writes, inject faults). The
folder-safety rules (who may have written a file) are checked here, on every read and lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .._exceptions import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    UnsafeCheckpointFolderError,
)
from .._ids import CHECKPOINT_ID, check_plan_id
from ._disk import (
    CLOEXEC,
    FILE_MODE,
    NOFOLLOW,
    NONBLOCK,
    describe_open_error,
    fsync_dir,
    make_private_dir,
    os_reason,
    refuse_unsafe,
    remove_tombstone,
    require_regular,
    write_all,
)
from ._lock import PlanLock
from ._store import Stored, WriteBatch, journal_name

__all__ = ["CheckpointFolder"]

_T = TypeVar("_T")
# A deleted plan's folder is first renamed to this (not a valid plan id, so never listed).
_DELETING = ".deleting-"
_TOMBSTONE_SUFFIX = re.compile(r"[0-9a-f]{12}")
_JOURNAL_PREFIX, _JOURNAL_SUFFIX = "journal-", ".jsonl"
_ITEM_ERRORS = (CheckpointCorruptError, UnsafeCheckpointFolderError)


class CheckpointFolder:
    """The checkpoint files under *root*, one sub-folder per plan (worker threads only)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

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
            fd = os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC | NONBLOCK)
        except FileNotFoundError:
            raise CheckpointNotFoundError(_strip_json(name), plan_id) from None
        except OSError as exc:
            raise CheckpointCorruptError(path, describe_open_error(path, exc)) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise CheckpointCorruptError(path, "is a directory, not a file")
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointCorruptError(path, "not a regular file")
            self._refuse_unsafe_folders(plan_id)
            refuse_unsafe(path, info, "the file")
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
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)  # whatever the umask took away
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, "a checkpoint with this name already exists")
            os.replace(temp, final)
            fsync_dir(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise CheckpointWriteError(final, os_reason(exc), errno_=exc.errno) from exc

    def append(self, plan_id: str, name: str, data: bytes) -> None:
        """Append *data* to a file durably (creating it if needed)."""
        folder = self._folder(plan_id, create=True)
        path = folder / name
        created = not os.path.lexists(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | CLOEXEC | NONBLOCK
        try:
            fd = os.open(path, flags, FILE_MODE)
            try:
                require_regular(fd, path)
                if created:
                    os.fchmod(fd, FILE_MODE)  # whatever the umask took away
                write_all(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(folder)
        except OSError as exc:
            raise CheckpointWriteError(path, os_reason(exc), errno_=exc.errno) from exc

    def truncate(self, plan_id: str, name: str) -> None:
        """Empty a file durably if it exists."""
        path = self.location(plan_id, name)
        try:
            fd = os.open(path, os.O_WRONLY | NOFOLLOW | CLOEXEC | NONBLOCK)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CheckpointWriteError(path, os_reason(exc), errno_=exc.errno) from exc
        try:
            require_regular(fd, path)
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError as exc:
            raise CheckpointWriteError(path, os_reason(exc), errno_=exc.errno) from exc
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
            raise CheckpointWriteError(path, os_reason(exc), errno_=exc.errno) from exc
        fsync_dir(path.parent)

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
            raise CheckpointWriteError(folder, os_reason(exc), errno_=exc.errno) from exc
        if names is not None:
            for name in names:
                path = folder / name
                if os.path.isdir(path) and not os.path.islink(path):
                    raise CheckpointWriteError(path, "unexpected folder inside a plan folder; not deleted")
            tombstone = self.root / f".{plan_id}{_DELETING}{secrets.token_hex(6)}"
            try:
                os.rename(folder, tombstone)
            except OSError as exc:
                raise CheckpointWriteError(folder, os_reason(exc), errno_=exc.errno) from exc
            fsync_dir(self.root)
            remove_tombstone(tombstone)
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

    def _read_journals(self, plan_id: str, parse: Callable[[str, bytes], _T]) -> list[Stored[_T]]:
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
                raise CheckpointCorruptError(path, os_reason(exc)) from exc
            refuse_unsafe(path, info, what)

    def _refuse_unsafe_files(self, folder: Path) -> None:
        for name in os.listdir(folder):
            path = folder / name
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                if not stat.S_ISLNK(info.st_mode):  # symlinks are never followed; their mode is moot
                    refuse_unsafe(path, info, "the file")

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
                    remove_tombstone(self.root / name)

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
            make_private_dir(self.root)
            make_private_dir(folder)
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
