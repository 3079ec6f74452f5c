"""Draw a trace (spans exported as JSON by scripts/real_llm.py) as a timeline PNG.

Usage: python scripts/trace_timeline.py [SPANS_JSON] [PNG]
(defaults: bench/results/real_llm_trace.json, docs/trace.png). Needs matplotlib.

One row per span, indented under its parent, in start order; bars coloured by kind
(workflow, plan, node, chat, checkpoint write); chat bars say their tokens, checkpoint
bars their bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"invoke_workflow": "#4c72b0", "plan": "#dd8452", "node": "#55a868", "chat": "#c44e52",
           "checkpoint": "#8172b3"}


def kind(name: str) -> str:
    """Return the span's kind: the first word of its name."""
    return name.split(" ", 1)[0]


def ordered(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Return (depth, span) in tree order: each span after its parent, siblings by start."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for span in spans:
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    rows: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            rows.append((depth, span))
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return rows


def label(span: dict[str, Any]) -> str:
    """Return the text beside a span's bar."""
    attrs = span["attributes"]
    if span["name"].startswith("chat"):
        tokens_in = attrs.get("gen_ai.usage.input_tokens")
        tokens_out = attrs.get("gen_ai.usage.output_tokens")
        return f"{tokens_in} in / {tokens_out} out"
    if span["name"] == "checkpoint write":
        reason = attrs.get("vibe_planner.checkpoint.reason", "")
        size = attrs.get("vibe_planner.checkpoint.bytes", 0)
        records = attrs.get("vibe_planner.journal.records", 0)
        if size:
            return f"{reason} snapshot {size / 1024:.1f} KiB"
        return f"journal, {records} record{'' if records == 1 else 's'}"
    if span["name"] == "plan":
        nodes, repairs = attrs.get("vibe_planner.nodes.total"), attrs.get("vibe_planner.plan.repairs", 0)
        return f"{nodes} nodes, {repairs} repairs"
    return ""


def main() -> None:
    """Read the spans, draw the timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "real_llm_trace.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "trace.png"
    spans = json.loads(source.read_text())
    rows = ordered(spans)
    origin = min(s["start_ns"] for s in spans)
    end = max(s["end_ns"] for s in spans)
    total = (end - origin) / 1e9
    fig, ax = plt.subplots(figsize=(12, 0.32 * len(rows) + 1.2))
    for y, (depth, span) in enumerate(rows):
        start, stop = (span["start_ns"] - origin) / 1e9, (span["end_ns"] - origin) / 1e9
        colour = COLOURS.get(kind(span["name"]), "#999999")
        ax.barh(y, max(stop - start, total / 800), left=start, color=colour,
                edgecolor="#aa0000" if span["status"] == "ERROR" else colour, height=0.7)
        ax.text(-0.36 + 0.025 * depth, y, span["name"], ha="left", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
        text = label(span)
        if text:
            ax.text(stop + total * 0.005, y, text, va="center", fontsize=7, color="#333333")
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlim(0, total * 1.18)
    ax.set_xlabel("seconds since the run began")
    root = next((s for _, s in rows if s["name"] == "invoke_workflow"), None)
    title = "vibe_planner trace"
    if root is not None:
        attrs = root["attributes"]
        title += (f": {attrs.get('vibe_planner.nodes.total', '?')} nodes, "
                  f"{attrs.get('vibe_planner.run.status', '?')} in {total:.1f} s")
    ax.set_title(title, fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.subplots_adjust(left=0.3, right=0.98)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    print(f"wrote {target} ({len(rows)} spans)")


if __name__ == "__main__":
    main()
