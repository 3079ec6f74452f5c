"""`FileCheckpointStore`: checkpoints as files in a local folder.

The file layout is drawn in `_folder` (`CheckpointFolder`).

Every async method of the `CheckpointStore` protocol makes one worker-thread hop
(`anyio.to_thread.run_sync`) in which it calls the synchronous primitives it inherits from
`CheckpointFolder` (`read`, `write_atomic`, `append`, `truncate`, `delete`, `lock`...). Those
are public so a subclass can wrap them (to count writes, inject faults); they run in worker
threads, never on the loop; the disk work under them is in `_disk`.

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

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._exceptions import CheckpointError, CheckpointNotFoundError, PlanLockedError
from .._ids import check_plan_id, checkpoint_sequence
from ._folder import CheckpointFolder
from ._lock import PlanLock
from ._store import CheckpointStore, Latest, Lease, Stored, WriteBatch, journal_name

__all__ = ["FileCheckpointStore"]

_T = TypeVar("_T")
_J = TypeVar("_J")

_token_mutex = threading.Lock()
_last_token = 0


def _next_token() -> int:
    global _last_token
    with _token_mutex:
        _last_token = max(time.time_ns(), _last_token + 1)
        return _last_token


class FileCheckpointStore(CheckpointFolder, CheckpointStore):
    """Checkpoints as files: owner-only, crash-safe (temp + fsync + rename + fsync folder).

    Args:
        root: The checkpoint folder, created (mode 0700) on first write.

    """

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

    def _check_lease(self, lease: Lease) -> None:
        lock = lease.handle
        if not isinstance(lock, PlanLock) or not lock.held or lock.plan_id != lease.plan_id:
            check_plan_id(lease.plan_id)
            raise PlanLockedError(lease.plan_id, self.location(lease.plan_id, ".lock"),
                                  "nobody: this lease was released or is not this store's")
        if lock.path != self.location(lease.plan_id, ".lock"):
            raise PlanLockedError(lease.plan_id, lock.path, "a lease of another store")
