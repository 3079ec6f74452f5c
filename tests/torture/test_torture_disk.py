"""Disk trouble: writes that fail mid-run (disk full, read-only folder, file size limit).

Documented policy (docs/checkpoints.md, "When the disk fails"): the run stops with
`CheckpointWriteError` (an `OSError` with ``.path`` and ``.reason``) rather than run on without
durability; the previous checkpoint is intact, and once the disk is fine the same
`execute_with_resume` call continues from it.

Failures come from four places, from the most controlled to the most real:
- a `FileCheckpointStore` subclass (the public extension point) whose writes start failing
  after N of them, swept over every write of a run;
- the file size limit (``RLIMIT_FSIZE``): the kernel refuses writes past a size (``EFBIG``);
- a plan folder made read-only while the run goes on (``chmod``; when the tests run as root,
  the worker runs without ``CAP_DAC_OVERRIDE`` so that the permission bits apply to it);
- a real full disk: a tiny tmpfs in a private mount namespace (where the machine allows it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner, allow_bodies, random_dag
from tests.torture.support import (
    CRASH_WORKER,
    FailingStore,
    Tally,
    chain_of,
    crash_plan_id,
    enospc_write_error,
    log_lines,
    recorded_completed,
)
from vibe_planner import (
    CheckpointWriteError,
    MetaPlanner,
    NodeContext,
    Vibe,
    WorkflowPersistenceManager,
)

NODES = random_dag(40, 9)
VIBE = Vibe(description="torture: disk trouble")
PLAN_ID = VIBE.default_plan_id()
CONCURRENCY = 4


class Work:
    """Counts calls, and calls made after the store started failing."""

    def __init__(self, store: FailingStore | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.after_failure = 0
        self.store = store

    async def __call__(self, ctx: NodeContext) -> str:
        self.calls[ctx.node.id] += 1
        if self.store is not None and self.store.failures:
            self.after_failure += 1
        await anyio.sleep(0.001)
        digest = hashlib.sha256(
            orjson.dumps([ctx.node.id, ctx.inputs], option=orjson.OPT_SORT_KEYS)
        )
        return digest.hexdigest()[:16]


def run(store: FailingStore, work: Work) -> Any:
    planner = MetaPlanner(
        planner=StaticPlanner(NODES),
        handlers={"work": work},
        persistence_manager=WorkflowPersistenceManager(store=store),
        checkpoint_interval=5,
        max_concurrency=CONCURRENCY,
    )

    async def go() -> Any:
        with anyio.fail_after(30):  # a failing disk must stop the run, not hang it
            try:
                return await planner.execute_with_resume(VIBE)
            except OSError as exc:
                return exc

    return anyio.run(go)


@pytest.fixture(scope="module")
def clean_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Outputs of a run on a healthy disk, and the writes it made."""
    store = FailingStore(tmp_path_factory.mktemp("clean") / "cp", None)
    result = run(store, Work())
    assert result.status == "completed"
    return result.outputs, store.writes


BARE_ERRORS = {
    "enospc": lambda path: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)),
    "erofs": lambda path: OSError(errno.EROFS, os.strerror(errno.EROFS), str(path)),
    "eio": lambda path: OSError(errno.EIO, os.strerror(errno.EIO), str(path)),
}


def test_a_store_failing_with_a_bare_oserror_stops_the_run_with_checkpoint_write_error(
    tmp_path: Path,
) -> None:
    """A custom store on a full disk raises what the OS raised; the run must still stop with
    the documented `CheckpointWriteError` saying which file and why (not a bare OSError
    without ``.path``/``.reason``)."""
    store = FailingStore(tmp_path / "cp", 3)
    outcome = run(store, Work(store))
    assert isinstance(outcome, CheckpointWriteError), (
        f"the run stopped with {type(outcome).__name__}: {outcome!r}, not CheckpointWriteError"
    )
    assert outcome.errno == errno.ENOSPC
    assert outcome.path is not None and PLAN_ID in str(outcome.path)
    assert "No space left on device" in outcome.reason


@pytest.mark.parametrize("error", [*BARE_ERRORS, "store-style-enospc"])
def test_disk_failing_at_every_write_of_a_run_then_healing(
    tmp_path: Path,
    clean_run: tuple[dict[str, Any], list[tuple[str, str]]],
    error: str,
    tally: Tally,
) -> None:
    """For each write N of a run: fail it and every later one, check what is left, heal, resume."""
    outputs, writes = clean_run
    make_error = enospc_write_error if error == "store-style-enospc" else BARE_ERRORS[error]
    expected_errno = errno.ENOSPC if error == "store-style-enospc" else make_error(Path()).errno
    for fail_from in range(len(writes)):
        root = tmp_path / f"w{fail_from}"
        store = FailingStore(root, fail_from, make_error=make_error)
        work = Work(store)
        outcome = run(store, work)
        if not store.failures:  # this run made fewer writes than the clean one: nothing failed
            assert outcome.status == "completed"
            continue
        assert isinstance(outcome, OSError), (
            f"write {fail_from} failed but the run went on: {outcome.status}"
        )
        assert outcome.errno == expected_errno
        # The run stopped: at most the nodes already running when the write failed went on.
        assert work.after_failure <= CONCURRENCY, work.after_failure

        folder = root / PLAN_ID
        assert not [p for p in folder.iterdir() if ".tmp-" in p.name], "a temp file was left behind"
        recorded = recorded_completed(root, PLAN_ID)

        async def check_loads(root: Path = root) -> None:
            manager = WorkflowPersistenceManager(root)
            assert await manager.verify() == []
            await manager.latest(PLAN_ID)

        anyio.run(check_loads)
        store.fail_from = None  # the disk is fine again
        again = Work()
        healed = run(store, again)
        assert not isinstance(healed, BaseException), healed
        assert healed.status == "completed" and healed.outputs == outputs
        assert not set(again.calls) & recorded, "work recorded before the failure ran again"
        assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
        tally.add("disk: injected write failures survived")


def test_journal_only_failures_keep_the_snapshot_chain_whole(
    tmp_path: Path, clean_run: tuple[dict[str, Any], list[tuple[str, str]]]
) -> None:
    """Only journal appends fail (a full disk that still has room to rename): same policy."""
    outputs, writes = clean_run
    appends = sum(1 for op, _ in writes if op == "append")
    for fail_from in range(0, appends, max(1, appends // 6)):
        root = tmp_path / f"a{fail_from}"
        store = FailingStore(root, fail_from, operations=frozenset({"append"}))
        outcome = run(store, Work(store))
        if not store.failures:  # this run batched its completions into fewer appends
            continue
        assert isinstance(outcome, OSError) and outcome.errno == errno.ENOSPC
        recorded = recorded_completed(root, PLAN_ID)
        store.fail_from = None
        again = Work()
        healed = run(store, again)
        assert healed.status == "completed" and healed.outputs == outputs
        assert not set(again.calls) & recorded
        assert chain_of(root / PLAN_ID)[-1].completed == len(NODES)


# -- real kernel errors in a worker process -------------------------------------------------------

SIZE = 300

LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def worker_args(
    checkpoint_dir: Path, log: Path, seed: int, interval: int, allow: Path | None = None
) -> list[str]:
    args = [str(checkpoint_dir), str(log), str(SIZE), str(seed), "0.001", str(interval), "journal"]
    return args if allow is None else [*args, str(allow)]


def clean_digest(tmp_path: Path, seed: int, interval: int) -> str:
    args = worker_args(tmp_path / "clean-cp", tmp_path / "clean.log", seed, interval)
    done = subprocess.run(
        [sys.executable, str(CRASH_WORKER), *args], capture_output=True, check=True, timeout=120
    )
    return done.stdout.decode().splitlines()[-1]


def resume_and_compare(
    tmp_path: Path, checkpoint_dir: Path, log: Path, seed: int, interval: int
) -> None:
    """The disk is fine again: the same call resumes, repeats nothing recorded, matches."""
    plan_id = crash_plan_id(SIZE, seed)
    recorded = recorded_completed(checkpoint_dir, plan_id)
    assert recorded, "the run should have recorded progress before the disk failed"

    async def loads() -> None:
        manager = WorkflowPersistenceManager(checkpoint_dir)
        problems = await manager.verify(plan_id)
        assert all(p.path.name.startswith("journal-") for p in problems), problems
        assert await manager.latest(plan_id) is not None

    anyio.run(loads)
    offset = log.stat().st_size
    args = worker_args(checkpoint_dir, log, seed, interval)
    done = subprocess.run(
        [sys.executable, str(CRASH_WORKER), *args], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert not set(log_lines(log, offset)) & recorded
    assert done.stdout.decode().splitlines()[-1] == clean_digest(tmp_path, seed, interval)
    # A temp file the failed write could not remove (in a read-only folder) is gone now.
    assert not list((checkpoint_dir / plan_id).glob(".*.tmp-*")), "a temp file was left behind"


# Node bodies a run under the file size limit may run. The files it must write then are past
# the limits below (a snapshot grows ~215 bytes and the journal ~250 per completed node: over
# 80 KB from ~180 nodes, over 48 KB from ~190), and the run cannot end on its own: if it went
# on after the failed write instead of stopping, it would wait for more bodies forever.
ALLOWED_UNDER_LIMIT = 250


@pytest.mark.parametrize(
    ("interval", "limit", "victim", "base_ratio"),
    [
        # Every snapshot a whole base, so that they grow with the run (deltas do not).
        pytest.param(5, 80_000, "cp-", "0", id="snapshot-too-large"),
        pytest.param(1000, 48_000, "journal-", "3", id="journal-too-large"),
    ],
)
def test_file_size_limit_stops_the_run_with_checkpoint_write_error(
    tmp_path: Path, interval: int, limit: int, victim: str, base_ratio: str, tally: Tally
) -> None:
    checkpoint_dir, log, allow = tmp_path / "cp", tmp_path / "effects.log", tmp_path / "allow"
    seed = 31
    allow_bodies(allow, ALLOWED_UNDER_LIMIT)
    args = worker_args(checkpoint_dir, log, seed, interval, allow)
    try:
        done = subprocess.run(
            [sys.executable, "-c", LIMITED, str(limit), str(CRASH_WORKER), *args],
            capture_output=True,
            timeout=120,
            env={**os.environ, "CRASH_WORKER_BASE_RATIO": base_ratio},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the run went on after a write failed (it waited for more node bodies)")
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr[-3000:]
    assert "CheckpointWriteError" in stderr and "File too large" in stderr, stderr[-3000:]
    assert f"/{victim}" in stderr.splitlines()[-1], stderr.splitlines()[-1]
    assert len(log_lines(log)) <= ALLOWED_UNDER_LIMIT
    resume_and_compare(tmp_path, checkpoint_dir, log, seed, interval)
    tally.add("disk: real kernel write errors survived")


@cache
def chmod_binds_this_process() -> bool:
    """Whether permission bits stop this process (they do not stop root)."""
    return os.geteuid() != 0


@cache
def setpriv() -> str | None:
    """`setpriv`, to run a worker as root without the capabilities that bypass permissions."""
    return shutil.which("setpriv")


def unprivileged(command: list[str]) -> list[str]:
    if chmod_binds_this_process():
        return command
    path = setpriv()
    assert path is not None
    return [path, "--bounding-set=-dac_override,-dac_read_search,-fowner", *command]


READ_ONLY_MECHANISMS = ["chmod"] if chmod_binds_this_process() or setpriv() else []


@pytest.mark.parametrize("mechanism", READ_ONLY_MECHANISMS)
def test_plan_folder_made_read_only_mid_run(tmp_path: Path, mechanism: str, tally: Tally) -> None:
    checkpoint_dir, log, allow = tmp_path / "cp", tmp_path / "effects.log", tmp_path / "allow"
    seed, interval = 32, 5
    plan_id = crash_plan_id(SIZE, seed)
    folder = checkpoint_dir / plan_id
    args = worker_args(checkpoint_dir, log, seed, interval, allow)
    command = unprivileged([sys.executable, str(CRASH_WORKER), *args])
    # The run pauses after 60 node bodies (however fast the machine), the folder turns
    # read-only, then 10 more bodies run: at least one snapshot is due after the chmod, and
    # the run cannot reach its end before it.
    allow_bodies(allow, 60)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 60
        while len(log_lines(log)) < 60:
            assert proc.poll() is None and time.monotonic() < deadline, "the worker stopped early"
            time.sleep(0.002)
        folder.chmod(0o500)
        allow_bodies(allow, 70)
        try:
            _, stderr_bytes = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            raise
        finally:
            folder.chmod(0o700)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 1, stderr[-3000:]
    assert "CheckpointWriteError" in stderr and "Permission denied" in stderr, stderr[-3000:]
    assert len(log_lines(log)) <= 70
    resume_and_compare(tmp_path, checkpoint_dir, log, seed, interval)
    tally.add("disk: read-only folder mid-run survived")


def test_read_only_store_mid_run_injected(tmp_path: Path) -> None:
    """The same scenario through the store extension point: a node flips the store to EROFS."""
    store = FailingStore(tmp_path / "cp", None, make_error=BARE_ERRORS["erofs"])
    outputs_clean = run(FailingStore(tmp_path / "clean", None), Work()).outputs

    class FlipAt(Work):
        async def __call__(self, ctx: NodeContext) -> str:
            if sum(self.calls.values()) == 20 and store.fail_from is None:
                store.fail_from = len(store.writes)
            return await super().__call__(ctx)

    outcome = run(store, FlipAt(store))
    assert isinstance(outcome, OSError) and outcome.errno == errno.EROFS
    recorded = recorded_completed(tmp_path / "cp", PLAN_ID)
    store.fail_from = None
    again = Work()
    healed = run(store, again)
    assert healed.status == "completed" and healed.outputs == outputs_clean
    assert not set(again.calls) & recorded


@cache
def can_mount_tmpfs() -> bool:
    """Whether a tmpfs can be mounted in a private mount namespace (root with CAP_SYS_ADMIN)."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        return False
    probe = subprocess.run(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d"; rmdir "$d"',
        ],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


FULL_DISK = """
set -u
mount -t tmpfs -o size=$SIZE,mode=0700 tmpfs "$MNT" || exit 90
"$PY" "$WORKER" "$MNT/cp" "$LOG" $ARGS > "$OUT/first.out" 2> "$OUT/first.err"
echo $? > "$OUT/first.rc"
cp -a "$MNT/cp" "$OUT/after-failure"
stat -c %s "$LOG" > "$OUT/offset"
mount -o remount,size=64m "$MNT"
"$PY" "$WORKER" "$MNT/cp" "$LOG" $ARGS > "$OUT/second.out" 2> "$OUT/second.err"
echo $? > "$OUT/second.rc"
cp -a "$MNT/cp" "$OUT/healed"
"""


def test_real_full_disk_then_more_space(tmp_path: Path, tally: Tally) -> None:
    """A 160 KiB tmpfs fills up mid-run (ENOSPC); it is then grown and the run resumed.

    The size is chosen so that the disk fills up however the snapshots coalesce: the planned
    snapshot (~41 KB), the first interval one (~43 KB, requested after 5 nodes) and the final
    one (~106 KB) do not fit together, while the first two do, so progress is recorded first.
    """
    if not can_mount_tmpfs():
        # No private mount namespace here (no CAP_SYS_ADMIN): the kernel's file size limit is
        # the closest real refusal of a write, so the same policy is checked with it instead
        # of skipping the test.
        test_file_size_limit_stops_the_run_with_checkpoint_write_error(
            tmp_path, 5, 80_000, "cp-", tally)
        tally.add("disk: tmpfs unavailable; the file size limit stood in for a full disk")
        return
    seed, interval = 33, 5
    plan_id = crash_plan_id(SIZE, seed)
    mount, out, log = tmp_path / "mnt", tmp_path / "out", tmp_path / "effects.log"
    mount.mkdir()
    out.mkdir()
    env = {
        **os.environ,
        "SIZE": "160k",
        "MNT": str(mount),
        "PY": sys.executable,
        "WORKER": str(CRASH_WORKER),
        "LOG": str(log),
        "OUT": str(out),
        "ARGS": " ".join(worker_args(Path("x"), log, seed, interval)[2:]),
    }
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_DISK],
        env=env,
        check=True,
        timeout=300,
    )
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first_err[-3000:]
    assert "CheckpointWriteError" in first_err and "No space left on device" in first_err
    recorded = recorded_completed(out / "after-failure", plan_id)
    assert recorded, "progress was recorded before the disk filled up"

    async def loads() -> None:
        manager = WorkflowPersistenceManager(out / "after-failure")
        problems = await manager.verify(plan_id)
        assert all(p.path.name.startswith("journal-") for p in problems), problems
        assert await manager.latest(plan_id) is not None

    anyio.run(loads)
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()[-3000:]
    offset = int((out / "offset").read_text())
    assert not set(log_lines(log, offset)) & recorded
    digest = (out / "second.out").read_text().splitlines()[-1]
    assert digest == clean_digest(tmp_path, seed, interval)
    tally.add("disk: real ENOSPC survived")
