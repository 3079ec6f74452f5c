"""The runnable examples in examples/ work as advertised."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_kill_and_resume_example(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "kill_and_resume.py"),
                           str(tmp_path / "cp")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    killed = int(re.search(r"after (\d+) of 30 nodes", out).group(1))  # type: ignore[union-attr]
    skipped = re.search(r"skipped (\d+) completed nodes: (.*)", out)
    ran = re.search(r"ran (\d+) nodes: (.*)", out)
    assert skipped and ran and "completed" in out
    skipped_ids, ran_ids = set(skipped.group(2).split()), set(ran.group(2).split())
    assert len(skipped_ids | ran_ids) == 30 and not skipped_ids & ran_ids
    assert killed >= 15 and len(skipped_ids) >= 10


def test_approval_example(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "approval.py"), str(tmp_path / "cp")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1. run: waiting")
    assert lines[1].startswith("   waiting for approval:1: Approve")
    assert lines[2].startswith("2. another process: recorded the answer to approval:1")
    resumed = re.match(r"3\. resume: completed, (\d+) nodes run, (\d+) restored", lines[3])
    assert resumed is not None and resumed.groups() == ("2", "11")  # approval and final only
    assert "'comment': 'cleared by legal'" in lines[4]
