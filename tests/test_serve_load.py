"""The service's load benchmark (`bench/serve_load.py`) keeps working: a tiny run, its checks, its file.

Nothing is timed against a bound: the numbers come from ``python -m bench.serve_load``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.serve_load import main


def test_a_tiny_run_checks_every_event_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "serve_load.json"
    assert main(["--plans", "3", "--rounds", "2", "--delay", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for row in result["rounds"]:
        assert row["plans"] == 3 and row["events"] >= 3 * 26  # each plan's events, all checked
        assert row["rss_after_mib"] > 0 and row["submit_ms"]["p50"] > 0
