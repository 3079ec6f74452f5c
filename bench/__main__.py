"""``python -m bench``: run the benchmark suite, write results, tables, the plot and the docs.

Full run (about 12 minutes on 2 cores; what ``nox -s bench`` runs)::

    python -m bench

Quick check that the harness works (under a minute, numbers meaningless)::

    python -m bench --quick --out /tmp/bench-quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .metrics import pair_ratios, summarize, targets
from .plot import plot
from .report import render, update_docs
from .runner import ROOT, Settings, check_systems, run_suite
from .systems import SYSTEMS, by_name
from .workloads import FULL_SIZES, FULL_SWEEPS, KEYS, QUICK_SIZES, QUICK_SWEEPS


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one repetition: checks the harness, not the numbers")
    parser.add_argument("--reps", type=int, help="repetitions (default 5; 1 with --quick)")
    parser.add_argument("--out", type=Path,
                        help="results folder (default bench/results; bench/results/quick with --quick)")
    parser.add_argument("--docs", type=Path,
                        help="Markdown page whose generated block to update "
                             "(default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--no-docs", action="store_true", help="do not update any Markdown page")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: redraw the plot and tables from the results in --out")
    parser.add_argument("--workloads", default=",".join(KEYS), help="comma-separated subset")
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS),
                        help="comma-separated subset")
    parser.add_argument("--deadline", type=float,
                        help="seconds a run may take before it is reported unfinished "
                             "(default 60; at most 30 for each phase of workload 5)")
    parser.add_argument("--jobs", type=int,
                        help="runs at once (default 1; 2 with --quick, whose numbers do not count)")
    parser.add_argument("--size", action="append", default=[], metavar="WORKLOAD=N[,N...]",
                        help="override a workload's size (several, comma-separated, for a sweep)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Turn the command line into `Settings`."""
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    sweeps = dict(QUICK_SWEEPS if args.quick else FULL_SWEEPS)
    for item in args.size:
        key, _, value = item.partition("=")
        values = tuple(int(v) for v in value.split(","))
        sizes[key] = values[0]
        if key in sweeps:
            sweeps[key] = values
    deadline = args.deadline or (20.0 if args.quick else 60.0)
    return Settings(
        sizes=sizes, reps=args.reps or (1 if args.quick else 5),
        workloads=[k for k in args.workloads.split(",") if k],
        systems=[by_name(n) for n in args.systems.split(",") if n],
        deadline=deadline, crash_cap=min(deadline, 30.0), slow_after=5.0,
        jobs=args.jobs or (2 if args.quick else 1), warmup=not args.quick, sweeps=sweeps,
    )


def aggregate(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Add ``summary`` and ``ratios`` to every system entry; return summaries by workload."""
    summaries: dict[str, dict[str, Any]] = {}
    for key, result in results.items():
        systems = result["systems"]
        kind = result["workload"]["key"]
        for entry in systems.values():
            entry["summary"] = summarize(entry["runs"], kind)
        for entry in systems.values():
            base = systems.get(entry["baseline"])
            if base is not None and base is not entry:
                by_rep = {r["rep"]: r for r in base["runs"]}
                mine = [r for r in entry["runs"] if r["rep"] in by_rep]
                entry["ratios"] = pair_ratios(mine, [by_rep[r["rep"]] for r in mine], kind)
        if kind == "slow":
            _ratios_to_none(systems)
        summaries[key] = {name: entry["summary"] for name, entry in systems.items()}
    return summaries


def _ratios_to_none(systems: dict[str, Any]) -> None:
    """Add ``wall_vs_none`` (wall time ÷ ``vibe_planner/none``'s, rep by rep) to vibe_planner's modes."""
    none = systems.get("vibe_planner/none")
    if none is None:
        return
    by_rep = {r["rep"]: r for r in none["runs"]}
    for entry in systems.values():
        if entry["family"] != "vibe_planner":
            continue
        values = [run["figures"]["wall_ms"] / by_rep[run["rep"]]["figures"]["wall_ms"]
                  for run in entry["runs"]
                  if "wall_ms" in run.get("figures", {})
                  and "wall_ms" in by_rep.get(run["rep"], {}).get("figures", {})]
        if values:
            entry["summary"]["wall_vs_none"] = {"median": statistics.median(values),
                                                "min": min(values), "max": max(values),
                                                "n": len(values)}


def write(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write one JSON file per workload and ``run.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for key, result in results.items():
        (out / f"{key}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "run.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the suite as the command line says."""
    args = parse(sys.argv[1:] if argv is None else argv)
    settings = settings_from(args)
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "")
    docs = None if args.no_docs else (args.docs or (None if args.quick else ROOT / "docs" / "benchmarks.md"))
    if args.render:
        return _render_only(out, docs)
    began, load_before = time.monotonic(), _load()
    available = check_systems(settings)
    for name, found in available.items():
        state = "available" if found.get("available") else f"UNAVAILABLE ({found.get('reason')})"
        print(f"{name:<22} {state}", file=sys.stderr)
    results = run_suite(settings, available)
    summaries = aggregate(results)
    versions: dict[str, str] = {}
    for found in available.values():
        versions |= found.get("versions", {})
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench", shlex.join(sys.argv[1:] if argv is None else argv)]).strip(),
        "python": platform.python_version(), "cpus": _cpus(), "machine": platform.machine(),
        "reps": settings.reps, "quick": args.quick, "sizes": settings.sizes,
        "sweeps": {k: v for k, v in settings.sweeps.items() if k in settings.workloads},
        "deadline_s": settings.deadline, "availability": available, "versions": versions,
        "targets": targets(summaries), "elapsed_s": time.monotonic() - began,
        "load_average": {"before": load_before, "after": _load()},
    }
    write(out, results, meta)
    _publish(out, results, meta, docs)
    _print_targets(meta["targets"])
    print(f"results in {out} ({meta['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


def _publish(out: Path, results: dict[str, Any], meta: dict[str, Any], docs: Path | None) -> None:
    """Draw the plot, render the tables into ``out/benchmarks.md`` and the docs page."""
    picture = plot(results, out / "benchmarks.png")
    generated = render(results, meta, picture, docs)
    (out / "benchmarks.md").write_text(generated)
    if docs is not None:
        update_docs(docs, generated)


def _render_only(out: Path, docs: Path | None) -> int:
    meta = json.loads((out / "run.json").read_text())
    results = {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))
               if path.stem != "run" and path.stem.split("-")[0] in KEYS}
    _publish(out, results, meta, docs)
    _print_targets(meta["targets"])
    return 0


def _load() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was besides the benchmark."""
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _print_targets(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        mark = {True: "HOLDS ", False: "MISSED", None: "n/a   "}[row["holds"]]
        value = "—" if row["value"] is None else format(row["value"], ",.4g")
        print(f"{mark} {row['target']}: {row['stat']} {value}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
