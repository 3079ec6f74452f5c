"""Trace a run against the loopback test server and draw it (a stand-in for the real trace).

Usage: python scripts/trace_demo.py [PNG]   (default docs/trace-loopback.png; needs matplotlib
and opentelemetry-sdk). The server (tests/fake_openai.py) answers the planner with a
four-step plan after 1 s and every node after 0.4 s, so the picture shows the shape of a run
(planning, nodes two at a time, journal writes, snapshots) without a model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import real_llm  # noqa: E402

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains  # noqa: E402

PLAN = {"steps": [
    {"step": 1, "title": "Brand story", "instructions": "Summarise the brand.", "after": []},
    {"step": 2, "title": "Launch offer", "instructions": "Describe the offer.", "after": [1]},
    {"step": 3, "title": "Tasting notes", "instructions": "Describe the coffee.", "after": [1]},
    {"step": 4, "title": "Blog post", "instructions": "Write the post.", "after": [2, 3]},
]}


def main() -> None:
    """Run, trace, draw."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "trace-loopback.png"
    with FakeOpenAIServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.on(text_contains("You are a planner", roles=["system"]), Reply(
            content=json.dumps(PLAN), delay=1.0,
            usage={"prompt_tokens": 520, "completion_tokens": 160, "total_tokens": 680}))
        server.set_default(Reply(content="A paragraph.", delay=0.4,
                                 usage={"prompt_tokens": 90, "completion_tokens": 120, "total_tokens": 210}))
        spans = Path(tmp) / "spans.json"
        model = real_llm.MODELS["0.5b"]
        report = anyio.run(real_llm.full_run, server.base_url, model, Path(tmp) / "cp", spans)
        print(report)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "trace_timeline.py"), str(spans), str(target)],
                       check=True)


if __name__ == "__main__":
    main()
