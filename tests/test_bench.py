"""The benchmark harness (`bench/`) keeps working: a quick run, its files, its tables.

This checks the harness, not the numbers: sizes are tiny and nothing is timed against a bound.
Peers (LangGraph, vibe-aigc) run if they are importable here and are otherwise reported as
unavailable; either way the run must succeed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.metrics import METRICS, SWEEP_TARGETS, TARGETS
from bench.report import BEGIN, END, render_workload, update_docs
from bench.workloads import KEYS, QUICK_SIZES, QUICK_SWEEPS, make_workload, result_key

ROOT = Path(__file__).resolve().parent.parent
VP = ["vibe_planner/none", "vibe_planner/interval", "vibe_planner/journal"]
PEERS = ["langgraph/sqlite", "vibe-aigc/interval"]
HEADLINE = {"fanout": "wall_ms", "uneven": "over_critical", "overhead": "nodes_per_s",
            "checkpoint": "lag_max_ms", "resume": "first_node_ms", "slow": "over_data"}
# (result key, workload key, size) of every result a quick run writes (a sweep at each size).
RESULTS = [(result_key(key, size, QUICK_SWEEPS), key, size)
           for key in KEYS for size in QUICK_SWEEPS.get(key, (QUICK_SIZES[key],))]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out / "results"),
         "--docs", str(out / "benchmarks.md"), "--systems", ",".join(VP + PEERS)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_quick_run_writes_a_result_file_per_workload(quick_run: Path) -> None:
    names = sorted(p.name for p in (quick_run / "results").glob("*.json"))
    assert names == sorted([f"{name}.json" for name, _, _ in RESULTS] + ["run.json"])


@pytest.mark.parametrize(("name", "key", "size"), [pytest.param(*r, id=r[0]) for r in RESULTS])
def test_vibe_planner_has_numbers_for_every_workload(quick_run: Path, name: str, key: str,
                                                     size: int) -> None:
    result = json.loads((quick_run / "results" / f"{name}.json").read_text())
    assert result["workload"]["key"] == key
    assert result["workload"]["size"] == size
    systems = result["systems"]
    assert set(systems) == set(VP + PEERS)
    for name in VP:
        entry = systems[name]
        if key == "resume" and name == "vibe_planner/none":
            assert entry["skipped"].startswith("not applicable")
            continue
        assert entry["skipped"] is None
        assert [run["ok"] for run in entry["runs"]] == [True], entry["runs"]
        summary = entry["summary"][HEADLINE[key]]
        assert summary["n"] == 1 and summary["min"] <= summary["median"] <= summary["max"]
        assert entry["runs"][0]["completed"] == size
        assert entry["runs"][0]["peak_rss_mb"] > 0


def test_peers_are_measured_or_reported_unavailable(quick_run: Path) -> None:
    meta = json.loads((quick_run / "results" / "run.json").read_text())
    fanout = json.loads((quick_run / "results" / "fanout.json").read_text())
    for name in PEERS:
        found = meta["availability"][name]
        entry = fanout["systems"][name]
        if found["available"]:
            assert entry["runs"] and entry["skipped"] is None
            assert "wall_ms" in entry["ratios"]  # paired with its vibe_planner mode
        else:
            assert found["reason"] and entry["skipped"].startswith("unavailable:")
            assert entry["runs"] == []


def test_targets_are_checked(quick_run: Path) -> None:
    meta = json.loads((quick_run / "results" / "run.json").read_text())
    sweeps = [t.text.format(size=f"{size:,}") for t in SWEEP_TARGETS for size in QUICK_SWEEPS["slow"]]
    assert [row["target"] for row in meta["targets"]] == [t.text for t in TARGETS] + sweeps
    assert all(row["value"] is not None for row in meta["targets"])


def test_docs_page_gets_the_generated_tables(quick_run: Path) -> None:
    text = (quick_run / "benchmarks.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert text.count("| system |") == len(RESULTS)
    assert "`vibe_planner/journal`" in text and "### vibe_planner targets" in text


def test_render_workload_makes_a_markdown_table() -> None:
    workload = make_workload("uneven", 10)
    runs = [{"ok": True, "rep": 0, "figures": {"wall_ms": 12.0, "over_critical": 1.01}}]
    entry = {"label": "x", "family": "vibe_planner", "variant": "none",
             "baseline": "vibe_planner/none", "skipped": None, "runs": runs,
             "summary": {"wall_ms": {"median": 12.0, "min": 11.0, "max": 13.0, "n": 2}}}
    skipped = {**entry, "baseline": "vibe_planner/none", "skipped": "unavailable: no module",
               "runs": [], "summary": {}}
    lines = render_workload({"workload": workload.describe(),
                             "systems": {"vibe_planner/none": entry, "langgraph/none": skipped}})
    table = [line for line in lines if line.startswith("|")]
    columns = 2 + len(METRICS["uneven"]) + sum(m.ratio for m in METRICS["uneven"])
    assert all(line.count("|") == columns + 1 for line in table)
    assert "12 (11\u201313)" in table[2] and "unavailable: no module" in table[3]


def test_update_docs_replaces_only_the_generated_block(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nHand-written analysis.\n")
    update_docs(page, "first\n")
    update_docs(page, "second\n")
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written analysis.\n")
    assert "second" in text and "first" not in text and text.count(BEGIN) == 1
