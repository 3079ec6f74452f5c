"""Figures per workload, derived from the raw runs; medians, ranges, pair ratios and targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .workloads import Workload

__all__ = ["METRICS", "SWEEP_TARGETS", "TARGETS", "Metric", "derive", "pair_ratios", "summarize", "targets"]


@dataclass(frozen=True)
class Metric:
    """One reported figure of a workload."""

    key: str
    label: str
    fmt: str
    """`format` spec of the value (``,.0f``, ``.2f``, ...)."""
    ratio: bool = False
    """Whether the report gives the peer-to-vibe_planner ratio of this figure."""


def _m(key: str, label: str, fmt: str, ratio: bool = False) -> Metric:
    return Metric(key, label, fmt, ratio)


METRICS: dict[str, tuple[Metric, ...]] = {
    "fanout": (_m("wall_ms", "wall ms", ".1f", True), _m("over_ideal", "÷ ideal 10 ms", ".2f"),
               _m("over_floor", "÷ bare sleep", ".2f"), _m("peak_rss_mb", "peak RSS MiB", ".0f", True)),
    "uneven": (_m("wall_ms", "wall ms", ".0f", True), _m("over_critical", "÷ critical path", ".3f"),
               _m("over_floor", "÷ bare chain", ".3f"), _m("peak_rss_mb", "peak RSS MiB", ".0f", True)),
    "overhead": (_m("nodes_per_s", "nodes/s", ",.0f"), _m("us_per_node", "µs/node", ",.0f", True),
                 _m("peak_rss_mb", "peak RSS MiB", ".0f", True)),
    "checkpoint": (_m("wall_ms", "wall ms", ",.0f"), _m("written_mb", "MB written", ".2f", True),
                   _m("largest_kb", "largest cp KB", ",.0f"), _m("checkpoints", "cps", ",.0f"),
                   _m("lag_max_ms", "max loop lag ms", ".1f", True),
                   _m("on_loop_max_ms", "longest on-loop cp call ms", ".1f"),
                   _m("peak_rss_mb", "peak RSS MiB", ".0f", True)),
    "resume": (_m("first_node_ms", "resume → 1st node ms", ",.0f", True),
               _m("reruns_recorded", "re-runs of recorded nodes", ",.0f"),
               _m("reruns_side_effects", "repeated side effects", ",.0f"),
               _m("recorded_complete", "recorded at kill", ",.0f"),
               _m("ran_before_kill", "ran before kill", ",.0f"),
               _m("resume_wall_s", "resume wall s", ".2f"),
               _m("peak_rss_mb", "peak RSS MiB", ".0f", True)),
    "slow": (_m("wall_ms", "wall ms", ",.0f"), _m("wall_vs_none", "wall ÷ vp/none", ".3f"),
             _m("written_mb", "MB written", ".2f", True),
             _m("over_data", "written ÷ (outputs + plan)", ".2f"),
             _m("largest_kb", "largest cp KB", ",.0f"), _m("checkpoints", "cps", ",.0f"),
             _m("peak_rss_mb", "peak RSS MiB", ".0f", True)),
}


def derive(workload: Workload, run: dict[str, Any]) -> dict[str, Any]:
    """Return the reported figures of one successful run (missing inputs are left out)."""
    wall = run.get("wall_s")
    out: dict[str, Any] = {"peak_rss_mb": run.get("peak_rss_mb")}
    if wall:
        out["wall_ms"] = wall * 1e3
        if workload.critical_path > 0:
            out["over_ideal" if workload.key == "fanout" else "over_critical"] = (
                wall / workload.critical_path)
        if run.get("bare_chain_s"):
            # The machine's floor: the critical chain slept with no orchestrator at all.
            out["over_floor"] = wall / run["bare_chain_s"]
        out["nodes_per_s"] = (run.get("nodes_run") or 0) / wall
        out["us_per_node"] = wall / max(1, run.get("nodes_run") or 0) * 1e6
        out["resume_wall_s"] = wall
    if run.get("bytes_written") is not None:
        out["written_mb"] = run["bytes_written"] / 1e6
        data = workload.size * workload.output_bytes + workload.plan_bytes
        out["over_data"] = run["bytes_written"] / data
    if run.get("cp_largest") is not None:
        out["largest_kb"] = run["cp_largest"] / 1e3
    if run.get("checkpoints") is not None:
        out["checkpoints"] = run["checkpoints"]
    if run.get("loop_lag_max_ms") is not None:
        out["lag_max_ms"] = run["loop_lag_max_ms"]
    on_loop = run.get("on_loop_checkpoint_max_ms", run.get("on_loop_serialize_max_ms"))
    if on_loop is not None:
        out["on_loop_max_ms"] = on_loop
    if run.get("first_node_s") is not None:
        out["first_node_ms"] = run["first_node_s"] * 1e3
    for key in ("reruns_recorded", "reruns_side_effects", "recorded_complete", "ran_before_kill"):
        if run.get(key) is not None:
            out[key] = run[key]
    wanted = {metric.key for metric in METRICS[workload.key]}
    return {k: v for k, v in out.items() if v is not None and k in wanted}


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarize(runs: list[dict[str, Any]], workload_key: str) -> dict[str, Any]:
    """Median, min and max of each metric over the successful runs."""
    good = [run["figures"] for run in runs if "figures" in run]
    summary = {}
    for metric in METRICS[workload_key]:
        stats = _stats([f[metric.key] for f in good if metric.key in f])
        if stats is not None:
            summary[metric.key] = stats
    return summary


def pair_ratios(
    runs: list[dict[str, Any]], baseline: list[dict[str, Any]], workload_key: str
) -> dict[str, Any]:
    """Ratio of each figure to the baseline's in the same repetition; median, min, max."""
    ratios: dict[str, Any] = {}
    for metric in METRICS[workload_key]:
        if not metric.ratio:
            continue
        values = []
        for mine, theirs in zip(runs, baseline, strict=False):
            if mine.get("kill_reason", "half") != "half":
                continue  # killed at the time cap, not half way: not the same state to resume
            a, b = mine.get("figures", {}).get(metric.key), theirs.get("figures", {}).get(metric.key)
            if a is not None and b:
                values.append(a / b)
        stats = _stats(values)
        if stats is not None:
            ratios[metric.key] = stats
    return ratios


@dataclass(frozen=True)
class _Target:
    workload: str
    system: str
    metric: str
    stat: str  # which statistic is compared: median or max
    op: str  # "<=" or ">="
    bound: float
    text: str


TARGETS = (
    _Target("uneven", "vibe_planner/none", "over_critical", "median", "<=", 1.05,
            "W2 wall / critical path <= 1.05 (checkpointing off)"),
    _Target("uneven", "vibe_planner/journal", "over_critical", "median", "<=", 1.05,
            "W2 wall / critical path <= 1.05 (journal)"),
    _Target("overhead", "vibe_planner/none", "nodes_per_s", "median", ">=", 20_000,
            "W3 >= 20,000 nodes/s with checkpointing off"),
    _Target("overhead", "vibe_planner/journal", "nodes_per_s", "median", ">=", 10_000,
            "W3 >= 10,000 nodes/s with the journal on"),
    _Target("checkpoint", "vibe_planner/journal", "lag_max_ms", "max", "<=", 5.0,
            "W4 loop never blocked > 5 ms (journal; max over reps)"),
    _Target("checkpoint", "vibe_planner/interval", "lag_max_ms", "max", "<=", 5.0,
            "W4 loop never blocked > 5 ms (interval; max over reps)"),
    _Target("resume", "vibe_planner/journal", "reruns_recorded", "max", "<=", 0,
            "W5 zero recorded-complete nodes re-run (journal)"),
    _Target("resume", "vibe_planner/journal", "first_node_ms", "median", "<=", 300,
            "W5 resume reaches the first node in < 300 ms (journal)"),
    # Issue 12's targets.
    _Target("resume", "vibe_planner/journal", "first_node_ms", "median", "<=", 100,
            "W5 resume reaches the first node in <= 100 ms (journal)"),
    _Target("fanout", "vibe_planner/journal", "over_floor", "median", "<=", 1.15,
            "W1 fan-out with the journal <= 1.15 x the bare 10 ms sleep"),
    _Target("uneven", "vibe_planner/journal", "over_floor", "median", "<=", 1.01,
            "W2 uneven DAG with the journal <= 1.01 x the bare chain"),
)

SWEEP_TARGETS = (
    _Target("slow", "vibe_planner/journal", "over_data", "max", "<=", 3.0,
            "W6 {size} nodes: bytes written <= 3 x (outputs + plan) (journal; max over reps)"),
    _Target("slow", "vibe_planner/interval", "over_data", "max", "<=", 3.0,
            "W6 {size} nodes: bytes written <= 3 x (outputs + plan) (interval; max over reps)"),
    _Target("slow", "vibe_planner/journal", "wall_vs_none", "median", "<=", 1.03,
            "W6 {size} nodes: wall with the journal <= 1.03 x durability none"),
)
"""Targets of a workload run at several sizes: checked at each size (results ``slow-<size>``)."""


def targets(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Check vibe_planner's targets against ``summaries[workload][system]``; one row each."""
    rows = []
    sweeps = sorted((key for key in summaries if key.split("-")[0] == "slow"),
                    key=lambda key: int(key.split("-")[1]))
    expanded = [*TARGETS, *(
        _Target(key, t.system, t.metric, t.stat, t.op, t.bound,
                t.text.format(size=f"{int(key.split('-')[1]):,}"))
        for t in SWEEP_TARGETS for key in sweeps)]
    for target in expanded:
        stats = summaries.get(target.workload, {}).get(target.system, {}).get(target.metric)
        value = None if stats is None else stats[target.stat]
        holds = None
        if value is not None:
            holds = value <= target.bound if target.op == "<=" else value >= target.bound
        rows.append({"target": target.text, "workload": target.workload, "system": target.system,
                     "metric": target.metric, "stat": target.stat, "bound": target.bound,
                     "op": target.op, "value": value, "holds": holds})
    return rows
