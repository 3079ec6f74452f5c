"""The workers benchmark (`python -m bench.scale`) keeps working: a quick run and its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_quick_scale_run_measures_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [(t["workers"], t["node_ms"]) for t in results["throughput"]] == \
        [(1, 0.0), (2, 0.0), (4, 0.0), (1, 10.0), (2, 10.0), (4, 10.0)]
    assert all(t["plans_per_s"] > 0 for t in results["throughput"])
    kill, term = results["takeover"]
    assert (kill["signal"], term["signal"]) == ("SIGKILL", "SIGTERM")
    assert len(kill["all_s"]) == kill["reps"] and len(term["all_s"]) == term["reps"]
    assert set(results["overhead"]["per_node_us"]) == {"files", "postgres"}
