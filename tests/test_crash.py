"""Crash safety with real processes killed by SIGKILL at random moments."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import allow_bodies, completed_in_chain
from vibe_planner import Vibe, WorkflowPersistenceManager

WORKER = Path(__file__).with_name("crash_worker.py")
SLACK = 10  # node bodies an attempt may run past its kill target: two interval snapshots' worth


def recorded_completed(checkpoint_dir: Path, plan_id: str) -> set[str]:
    """Completed nodes per the files on disk, read independently of the library's own loader:
    those of the newest snapshot (a base's ``completed_nodes``, or a delta's chain), every
    intact record of its run's journal, and
    those of every journal whose header says it continues that snapshot (a resumed run that
    died before its own first snapshot)."""
    folder = checkpoint_dir / plan_id
    snapshots = sorted(folder.glob("cp-*.json")) if folder.exists() else []
    if not snapshots:
        return set()
    document = orjson.loads(snapshots[-1].read_bytes())
    done = completed_in_chain(folder, document)
    for journal in folder.glob("journal-*.jsonl"):
        run_id = journal.name.removeprefix("journal-").removesuffix(".jsonl")
        entries = intact_entries(journal)
        header = entries[0] if entries and "resumed_from" in entries[0] else None
        continues = header is not None and header == {"run": run_id,
                                                      "resumed_from": document["checkpoint_id"]}
        if run_id == document["run_id"] or continues:
            done.update(entry["result"]["node_id"] for entry in entries if "result" in entry)
    return done


def intact_entries(journal: Path) -> list[dict[str, Any]]:
    """The entries of a journal up to its first torn or damaged line."""
    entries = []
    for line in journal.read_bytes().split(b"\n")[:-1]:
        crc, _, payload = line.partition(b" ")
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(payload):
            break
        entries.append(orjson.loads(payload))
    return entries


def test_library_restore_agrees_with_the_independent_reader(tmp_path: Path) -> None:
    checkpoint_dir, log, allow = tmp_path / "cp", tmp_path / "effects.log", tmp_path / "allow"
    args = [str(checkpoint_dir), str(log), "60", "3", "0.002", "1000", "journal", str(allow)]
    plan_id = Vibe(description="crash test 60 3").default_plan_id()
    allow_bodies(allow, 40)  # the run cannot end (and write a final snapshot) before the kill
    with subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while len(recorded_completed(checkpoint_dir, plan_id)) < 20:
            assert time.monotonic() < deadline and proc.poll() is None, "nothing journaled in 60 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)

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
    """Kill the worker *kills* times at random moments, each after it recorded something new.

    Each attempt may run at most ``target + SLACK`` node bodies (the worker's ALLOW_FILE), so
    however late the kill lands on a loaded machine, the attempt cannot finish the plan on its
    own: the kills land by construction, not by the scheduler's grace.
    """
    rng = random.Random(seed)
    checkpoint_dir, log, allow = tmp_path / "cp", tmp_path / "effects.log", tmp_path / "allow"
    args = [str(checkpoint_dir), str(log), str(size), str(seed), "0.002", "5", durability]
    plan_id = Vibe(description=f"crash test {size} {seed}").default_plan_id()
    stats = {"kills": 0, "protected_checks": 0}
    for _ in range(kills):
        recorded = recorded_completed(checkpoint_dir, plan_id)
        if len(recorded) == size:
            break
        offset = log.stat().st_size if log.exists() else 0
        target = rng.randint(1, 40)
        allow_bodies(allow, target + SLACK)
        with subprocess.Popen([sys.executable, str(WORKER), *args, str(allow)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
            # Kill once the attempt ran `target` bodies *and* the files record a completion
            # they did not before: a kill that lands before anything was recorded checks nothing.
            deadline = time.monotonic() + 60
            while proc.poll() is None and (
                len(log_lines(log, offset)) < target
                or not recorded_completed(checkpoint_dir, plan_id) - recorded
            ):
                assert time.monotonic() < deadline, "worker recorded nothing new in 60 s"
                time.sleep(0.002)
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
    # Each attempt records something new before its kill and runs at most 50 bodies, so the
    # first three of 150 nodes cannot finish the plan: they are killed, and the second and
    # third start with recorded nodes that must not run again.
    assert stats["kills"] >= 3
    assert stats["protected_checks"] > 0
