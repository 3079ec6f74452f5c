"""The PNG: one bar chart per headline figure, bars at the median, whiskers at min and max."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PANELS", "plot", "plot_sweep"]

# (workload, metric, title with {size}, log scale, target line)
PANELS: tuple[tuple[str, str, str, bool, float | None], ...] = (
    ("fanout", "wall_ms", "1. Fan-out, {size} x 10 ms: wall ms (ideal 10)", True, 10.0),
    ("uneven", "over_critical", "2. Uneven DAG, {size} nodes: wall ÷ critical path (target 1.05)",
     False, 1.05),
    ("overhead", "nodes_per_s", "3. {size} no-op nodes: nodes/s (target 20k off, 10k journal)",
     True, 20_000.0),
    ("checkpoint", "written_mb", "4. {size} nodes x 1 KB: MB written", True, None),
    ("checkpoint", "lag_max_ms", "4. {size} nodes x 1 KB: longest loop stall ms (target 5)",
     True, 5.0),
    ("resume", "first_node_ms", "5. Resume {size} nodes: ms to first node (target 300)", True, 300.0),
)

_SHORT = {"vibe_planner": "vp", "langgraph": "lg", "vibe-aigc": "aigc"}
_COLOURS = {"vibe_planner": ("#08306b", "#2171b5", "#6baed6"),
            "langgraph": ("#7f2704", "#d94801", "#fd8d3c"),
            "vibe-aigc": ("#00441b", "#238b45", "#74c476")}


def _colour(entry: dict[str, Any], index: int) -> str:
    shades = _COLOURS.get(entry["family"], ("#444444", "#777777", "#aaaaaa"))
    return shades[index % len(shades)]


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Draw the panels for the workloads present in *results*; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [p for p in PANELS if p[0] in results]
    sweep = any(r["workload"]["key"] == "slow" for r in results.values())
    if not panels and not sweep:
        return None
    columns = 3
    rows = (len(panels) + sweep + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(16, 4.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        _panel(ax, results[panel[0]], *panel[1:])
    rest = list(axes.flat)[len(panels):]
    if sweep:
        plot_sweep(results, rest.pop(0))
    for ax in rest:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _panel(ax: Any, result: dict[str, Any], metric: str, title: str, log: bool,
           target: float | None) -> None:
    names, medians, low, high, colours, missing = [], [], [], [], [], []
    seen: dict[str, int] = {}
    for entry in result["systems"].values():
        index = seen[entry["family"]] = seen.get(entry["family"], -1) + 1
        stats = None if entry.get("stopped") else entry.get("summary", {}).get(metric)
        names.append(f"{_SHORT.get(entry['family'], entry['family'])}\n{entry['variant']}")
        colours.append(_colour(entry, index))
        missing.append("" if stats else "DNF" if entry.get("stopped") else "n/a")
        median = stats["median"] if stats else 0.0
        medians.append(median)
        low.append(median - stats["min"] if stats else 0.0)
        high.append(stats["max"] - median if stats else 0.0)
    positions = list(range(len(names)))
    ax.bar(positions, medians, color=colours, yerr=[low, high], capsize=3)
    for x, value, why in zip(positions, medians, missing, strict=True):
        if why or not value:
            ax.text(x, 0.02, why or "0", ha="center", fontsize=7, color="#666",
                    transform=ax.get_xaxis_transform())
        elif value:
            ax.annotate(_label(value), (x, value), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    if target is not None:
        ax.axhline(target, color="#b00", linestyle="--", linewidth=1)
    if log and any(medians):
        _log_axis(ax)
    ax.set_xticks(positions, names, fontsize=8)
    ax.set_title(title.format(size=f"{result['workload']['size']:,}"), fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _log_axis(ax: Any) -> None:
    """Log scale with plain numbers; minor ticks labelled at 2 and 5 times a power of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def plot_sweep(results: dict[str, Any], ax: Any, key: str = "slow") -> bool:
    """Draw bytes written against plan size, one line per system; whether there was anything."""
    sweep = sorted((r for r in results.values() if r["workload"]["key"] == key),
                   key=lambda r: r["workload"]["size"])
    if not sweep:
        return False
    names = list(sweep[0]["systems"])
    for index, name in enumerate(names):
        points = []
        for result in sweep:
            entry = result["systems"].get(name, {})
            stats = entry.get("summary", {}).get("written_mb")
            if stats and not entry.get("skipped"):
                points.append((result["workload"]["size"], stats["median"]))
        if points and any(y for _, y in points):
            family = sweep[0]["systems"][name]["family"]
            ax.plot(*zip(*points, strict=True), marker="o", label=name,
                    color=_COLOURS.get(family, ("#444",) * 3)[index % 3])
    data = [(r["workload"]["size"], (r["workload"]["size"] * r["workload"]["output_bytes"]
             + r["workload"]["plan_bytes"]) / 1e6) for r in sweep]
    ax.plot(*zip(*data, strict=True), linestyle=":", color="#555", label="outputs + plan")
    ax.plot([x for x, _ in data], [3 * y for _, y in data], linestyle="--", color="#b00",
            linewidth=1, label="target: 3 x (outputs + plan)")
    ax.set_xscale("log")
    _log_axis(ax)
    ax.set_xticks([x for x, _ in data], [f"{x:,}" for x, _ in data])
    ax.set_xlabel("nodes", fontsize=8)
    ax.set_title("6. Slow nodes, 1 KB outputs: MB written vs plan size", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return True
