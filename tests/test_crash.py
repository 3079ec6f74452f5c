"""Crash safety with real processes killed by SIGKILL at random moments."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import anyio
import orjson
import pytest

from vibe_planner import Vibe, WorkflowPersistenceManager

WORKER = Path(__file__).with_name("crash_worker.py")


def recorded_completed(checkpoint_dir: Path, plan_id: str) -> set[str]:
    """Completed nodes per the files on disk, read independently of the library's own loader:
    the newest snapshot's ``completed_nodes`` plus every intact record of its run's journal."""
    folder = checkpoint_dir / plan_id
    snapshots = sorted(folder.glob("cp-*.json")) if folder.exists() else []
    if not snapshots:
        return set()
    document = orjson.loads(snapshots[-1].read_bytes())
    done = set(document["completed_nodes"])
    journal = folder / f"journal-{document['run_id']}.jsonl"
    if journal.exists():
        for line in journal.read_bytes().split(b"\n")[:-1]:
            crc, _, payload = line.partition(b" ")
            if int(crc, 16) != zlib.crc32(payload):
                break
            done.add(orjson.loads(payload)["result"]["node_id"])
    return done


def test_library_restore_agrees_with_the_independent_reader(tmp_path: Path) -> None:
    checkpoint_dir, log = tmp_path / "cp", tmp_path / "effects.log"
    args = [str(checkpoint_dir), str(log), "60", "3", "0.002", "1000", "journal"]
    with subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while len(log_lines(log)) < 30:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    plan_id = Vibe(description="crash test 60 3").default_plan_id()

    async def load() -> set[str]:
        restored = await WorkflowPersistenceManager(checkpoint_dir).restore(plan_id)
        assert restored is not None
        assert restored.checkpoint.reason == "planned"  # interval 1000: only the journal has progress
        return set(restored.checkpoint.completed_nodes) | {r["node_id"] for r in restored.journal_records}

    from_library = anyio.run(load)
    assert from_library == recorded_completed(checkpoint_dir, plan_id)
    assert len(from_library) >= 20


def log_lines(path: Path, offset: int = 0) -> list[str]:
    if not path.exists():
        return []
    return path.read_bytes()[offset:].decode().splitlines()


def run_to_completion(args: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, check=True,
                          timeout=120)
    return done.stdout.decode().splitlines()


def crash_loop(tmp_path: Path, *, size: int, seed: int, kills: int, durability: str) -> dict[str, int]:
    rng = random.Random(seed)
    checkpoint_dir, log = tmp_path / "cp", tmp_path / "effects.log"
    args = [str(checkpoint_dir), str(log), str(size), str(seed), "0.002", "5", durability]
    plan_id = Vibe(description=f"crash test {size} {seed}").default_plan_id()
    stats = {"kills": 0, "protected_checks": 0}
    for _ in range(kills):
        recorded = recorded_completed(checkpoint_dir, plan_id)
        if len(recorded) == size:
            break
        offset = log.stat().st_size if log.exists() else 0
        target = rng.randint(1, 40)
        with subprocess.Popen([sys.executable, str(WORKER), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
            deadline = time.monotonic() + 60
            while len(log_lines(log, offset)) < target and proc.poll() is None:
                assert time.monotonic() < deadline, "worker made no progress"
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stderr = proc.stderr.read() if proc.stderr else b""
            assert proc.returncode in (-signal.SIGKILL, 0), stderr.decode()
        stats["kills"] += proc.returncode == -signal.SIGKILL
        rerun = set(log_lines(log, offset)) & recorded
        assert not rerun, f"recorded nodes ran again after a crash: {sorted(rerun)[:10]}"
        stats["protected_checks"] += len(recorded)
    offset = log.stat().st_size if log.exists() else 0
    recorded = recorded_completed(checkpoint_dir, plan_id)
    final = run_to_completion(args)
    assert not set(log_lines(log, offset)) & recorded
    clean = run_to_completion([str(tmp_path / "clean-cp"), str(tmp_path / "clean.log"),
                               str(size), str(seed), "0", "5", durability])
    assert final[-1] == clean[-1], "outputs after crashes differ from a run that never crashed"
    assert final[0].startswith("completed")
    return stats


@pytest.mark.parametrize("durability", ["journal", "interval"])
def test_sigkill_never_reruns_recorded_nodes_and_outputs_match(tmp_path: Path, durability: str) -> None:
    stats = crash_loop(tmp_path, size=150, seed=7, kills=8, durability=durability)
    assert stats["kills"] >= 3
    assert stats["protected_checks"] > 0
