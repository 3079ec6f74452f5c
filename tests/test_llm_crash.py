"""End to end: plan with an LLM, SIGKILL the process mid-run, resume; check at the server."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_crash import recorded_completed
from vibe_planner import Vibe

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "llm_worker.py"
SERVER = ROOT / "tests" / "fake_openai.py"
STEP = re.compile(r"Step '([^']+)'")
HELD = "step-5"  # no other node depends on it; it is ready once step-0 and step-1 are done


def fifty_node_plan(seed: int = 11) -> dict[str, object]:
    rng = random.Random(seed)
    nodes = []
    for i in range(50):
        deps = sorted(rng.sample(range(i), min(i, rng.randint(0, 2))))
        nodes.append({"id": f"step-{i}", "instructions": f"Do part {i}.",
                      "depends_on": [f"step-{d}" for d in deps]})
    return {"nodes": nodes}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({
        "default": {"mode": "echo", "delay": 0.03},
        "rules": [{"match_substring": "You are a planner", "roles": ["system"],
                   "content_json": fifty_node_plan()},
                  # The first request for an early sink is answered only when the server
                  # stops: the first run cannot finish before the test kills it.
                  {"match_substring": f"Step '{HELD}'", "roles": ["user"], "delay": 600,
                   "times": 1, "content": "too late"}],
    }))
    port_file, log = tmp_path / "port", tmp_path / "requests.log"
    with subprocess.Popen([sys.executable, str(SERVER), "--port-file", str(port_file),
                           "--script", str(script), "--log", str(log)]) as proc:
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():  # written atomically (`os.replace`)
                assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.01)
            yield f"http://127.0.0.1:{port_file.read_text().strip()}/v1", log
        finally:
            proc.terminate()


def logged(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    entries = []
    for line in log.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the server is still writing this line
    return entries


def classify(entries: list[dict[str, object]]) -> tuple[int, Counter[str]]:
    planner, nodes = 0, Counter[str]()
    for entry in entries:
        body = entry.get("body")
        if not isinstance(body, dict) or "messages" not in body:
            continue
        text = json.dumps(body["messages"])
        if "You are a planner" in text:
            planner += 1
        elif match := STEP.search(text):
            nodes[match.group(1)] += 1
    return planner, nodes


def test_kill_and_resume_never_replans_nor_resends_completed_prompts(
    tmp_path: Path, server: tuple[str, Path]
) -> None:
    base_url, log = server
    checkpoint_dir = tmp_path / "cp"
    args = [sys.executable, str(WORKER), str(checkpoint_dir), base_url, "an e2e vibe"]
    plan_id = Vibe(description="an e2e vibe").default_plan_id()
    with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        # Kill once 20 prompts (the held one among them) reached the server and 10
        # completions are on disk: what the resume must not send again is then there by
        # construction, not by the kill's timing.
        deadline = time.monotonic() + 60
        while ((sent := classify(logged(log))[1]).total() < 20 or not sent[HELD]
               or len(recorded_completed(checkpoint_dir, plan_id)) < 10):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    recorded = recorded_completed(checkpoint_dir, plan_id)
    before = len(logged(log))
    assert len(recorded) >= 10

    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    status, nodes_run, restored, _ = done.stdout.split()
    assert status == "completed" and int(restored) == len(recorded)
    assert int(nodes_run) == 50 - len(recorded)

    planner_requests, per_node = classify(logged(log))
    assert planner_requests == 1, "the resume asked the LLM to plan again"
    assert len(per_node) == 50
    resent = {node for node, count in per_node.items() if count > 1}
    assert not resent & recorded, f"completed nodes' prompts were sent again: {resent & recorded}"
    after = len(logged(log)) - before
    assert after == 50 - len(recorded) + 0  # one request per node still to run, nothing else
