"""Every ```python block of docs/*.md and README.md runs, in order, one namespace per page.

Pages about LLM providers run against a scripted OpenAI-compatible server on loopback, whose
address is put in ``OPENAI_BASE_URL`` as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vibe_planner
from tests.fake_openai import FakeOpenAIServer, text_contains

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LLM_PAGES = {"providers.md"}
PG_PAGES = {"scaling.md"}
"""Pages whose examples use a PostgreSQL store: ``VIBE_PLANNER_STORE`` names the test server."""
DOC_PLAN = {"nodes": [
    {"id": "ideas", "instructions": "List ideas."},
    {"id": "draft", "instructions": "Write it.", "depends_on": ["ideas"]},
    {"id": "polish", "instructions": "Polish it.", "depends_on": ["draft"]},
]}


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        server.on(text_contains("You are a planner", roles=["system"]), json.dumps(DOC_PLAN))
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-docs")
        yield server


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page: Path, request: pytest.FixtureRequest,
                           capsys: pytest.CaptureFixture[str]) -> None:
    if page.name in LLM_PAGES:
        server = request.getfixturevalue("llm_env")
    if page.name in PG_PAGES:
        from tests import pg

        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("VIBE_PLANNER_STORE", f"{pg.server().url}?schema={pg.fresh_schema()}")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for index, block in enumerate(python_blocks(page)):
        code = compile(block, f"{page.name}[block {index}]", "exec")
        exec(code, namespace)
    assert capsys.readouterr().err == ""
    if page.name in LLM_PAGES:
        assert server.chat_requests()  # the examples really talked to the server


def test_readme_starts_with_the_two_commands_and_the_run_command_works(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```console\n(.*?)```", text, re.S)
    assert block is not None and text.index(block.group(0)) < 40  # the README's first lines
    install_and_run, install_and_test = block.group(1).strip().splitlines()
    assert "pip install" in install_and_run and "vibe-planner run" in install_and_run
    assert "nox" in install_and_test
    assert install_and_test in (ROOT / ".ci" / "run").read_text()  # CI runs the same command
    # Run the README's run command with the installed console script (the install is CI's job).
    argv = shlex.split(install_and_run.split("&&")[-1])
    script = Path(sys.executable).parent / "vibe-planner"
    done = subprocess.run([str(script), *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "offline" in done.stdout
    assert list((tmp_path / ".vibe_checkpoints").glob("*/cp-*.json"))


def test_providers_shell_example_runs_against_a_loopback_server(tmp_path: Path) -> None:
    block = re.search(r"```console\n(.*?)```", (ROOT / "docs" / "providers.md").read_text(), re.S)
    assert block is not None
    export, run = [line.removeprefix("$ ") for line in block.group(1).strip().splitlines()]
    env = dict(os.environ)
    env.update(word.split("=", 1) for word in shlex.split(export)[1:])
    assert env["OPENAI_BASE_URL"] == "http://localhost:11434/v1"
    with FakeOpenAIServer() as server:
        server.on(text_contains("You are a planner", roles=["system"]), json.dumps(DOC_PLAN))
        env["OPENAI_BASE_URL"] = server.base_url  # stands in for the Ollama server
        argv = shlex.split(run)
        script = Path(sys.executable).parent / argv[0]
        done = subprocess.run([str(script), *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert {b["model"] for b in server.chat_requests()} == {env["VIBE_PLANNER_MODEL"]}
        assert len(server.chat_requests()) == 1 + len(DOC_PLAN["nodes"])
    assert "completed: plan" in done.stdout and "ran offline" not in done.stdout


def test_every_public_name_appears_in_a_doc_example() -> None:
    code = "\n".join(block for page in PAGES for block in python_blocks(page))
    missing = [name for name in vibe_planner.__all__
               if not re.search(rf"\b{re.escape(name)}\b", code)]
    assert not missing, f"public names in no ```python block of docs/*.md or README.md: {missing}"
