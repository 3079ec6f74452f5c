"""The API key never leaks, even when the server echoes it back (as some gateways do).

A real `openai` client talks to the fake server on loopback; the server answers with the key
in its error bodies and replies. Exceptions (with their tracebacks), log lines at DEBUG,
node errors, progress events and every byte under the checkpoint folder must not show it.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import string
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains
from tests.helpers import StaticPlanner, node
from vibe_planner import (
    LLMConfig,
    LLMPlanner,
    MetaPlanner,
    NodeStatus,
    PlanningError,
    ProgressEvent,
    RetryPolicy,
    Vibe,
    WorkflowPersistenceManager,
)
from vibe_planner._redact import MARKER, Redactor, redact

pytestmark = pytest.mark.anyio
_ALPHABET = string.ascii_letters + string.digits
KEY = "sk-proj-" + "".join(random.Random(7).choices(_ALPHABET, k=40))
is_planner = text_contains("You are a planner", roles=["system"])
PLAN = json.dumps({"nodes": [{"id": "outline", "instructions": "Outline it."},
                             {"id": "draft", "instructions": "Draft it.", "depends_on": ["outline"]}]})


def leaks(text: str | bytes, key: str = KEY) -> list[str]:
    """The forms of *key* found in *text*: whole, encoded, or any run of 8 of its characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lowered = text.lower()
    forms = {
        "percent": "".join(f"%{b:02x}" for b in key.encode()),
        "base64": base64.b64encode(key.encode()).decode()[:-4].lower(),
        "basic-auth": base64.b64encode(f"api:{key}".encode()).decode()[8:-4].lower(),
    }
    found = [name for name, form in forms.items() if form in lowered]
    runs = {key[i : i + 8].lower() for i in range(len(key) - 7)}
    return found + sorted(run for run in runs if run in lowered)


def everything_said(exc: BaseException | None, caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text, *(record.getMessage() for record in caplog.records)]
    if exc is not None:
        parts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        parts += [repr(vars(exc))]
    return "\n".join(parts)


def config(server: FakeOpenAIServer, **kwargs: Any) -> LLMConfig:
    kwargs.setdefault("retry_initial_delay", 0.0)
    return LLMConfig(model="gpt-4o-mini", base_url=server.base_url, api_key=KEY, **kwargs)


def planner_for(server: FakeOpenAIServer, tmp_path: Path, **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(llm=config(server, **kwargs.pop("llm", {})),
                       persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                       retry=RetryPolicy(max_attempts=2, initial_delay=0.0), **kwargs)


def checkpoint_bytes(tmp_path: Path) -> list[tuple[Path, bytes]]:
    files = [(p, p.read_bytes()) for p in sorted((tmp_path / "cp").rglob("*")) if p.is_file()]
    assert any(p.name.startswith("cp-") for p, _ in files)
    return files


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def test_the_helper_sees_every_form() -> None:
    assert leaks(f"Bearer {KEY}") and leaks(KEY.upper()) and leaks(KEY[10:18])
    assert leaks(urllib.parse.quote(KEY, safe="-")) and leaks("".join(f"%{b:02X}" for b in KEY.encode()))
    assert leaks(base64.b64encode(KEY.encode())) and leaks(base64.b64encode(f"api:{KEY}".encode()))
    assert not leaks(KEY[10:17]) and not leaks(MARKER)


# -- planning ---------------------------------------------------------------------------------
async def test_a_401_echoing_the_key_during_planning(
    server: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_default(Reply.error(401, f"Incorrect API key provided: {KEY}"))
    planner = planner_for(server, tmp_path)
    with pytest.raises(PlanningError) as info:
        await planner.execute("x")
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"  # the key was sent
    assert str(info.value) == ("planning failed: LLM endpoint answered 401: "
                               f"Incorrect API key provided: {MARKER}")
    assert leaks(everything_said(info.value, caplog)) == []


@pytest.mark.parametrize("echo", [
    pytest.param(f"Incorrect API key provided: Bearer {KEY}.", id="bearer"),
    pytest.param(f"Incorrect API key provided: {KEY[:20]}...", id="truncated"),
    pytest.param(f"Incorrect API key provided: {KEY[:12]}{'*' * 28}{KEY[-4:]}", id="masked"),
    pytest.param(f"Key ...{KEY[-10:]} is revoked", id="tail"),
    pytest.param(f"Incorrect API key provided: {KEY.upper()}", id="upper-case"),
    pytest.param(f"GET /v1/x?api_key={urllib.parse.quote(KEY + '/=', safe='')}", id="url-encoded"),
    pytest.param("key: " + "".join(f"%{b:02X}" for b in KEY.encode()), id="percent-every-byte"),
    pytest.param(f"token {base64.b64encode(KEY.encode()).decode()} rejected", id="base64"),
    pytest.param(f"Basic {base64.b64encode(f'api:{KEY}'.encode()).decode()}", id="basic-auth"),
    pytest.param(json.dumps({"headers": {"Authorization": f"Bearer {KEY}"}}), id="json-in-message"),
])
async def test_encoded_and_partial_echoes(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture, echo: str
) -> None:
    assert leaks(echo)
    server.set_default(Reply.error(401, echo))
    with pytest.raises(PlanningError) as info:
        await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert MARKER in str(info.value)
    assert leaks(everything_said(info.value, caplog)) == []


@pytest.mark.parametrize("body", [
    pytest.param({"error": f"invalid api key {KEY}"}, id="error-is-a-string"),
    pytest.param({"message": f"invalid api key {KEY}"}, id="top-level-message"),
    pytest.param({"detail": f"invalid api key {KEY}"}, id="unknown-shape"),
])
async def test_other_error_body_shapes(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture, body: dict[str, Any]
) -> None:
    server.set_default(Reply(status=401, json_body=body))
    with pytest.raises(PlanningError, match="401") as info:
        await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert leaks(everything_said(info.value, caplog)) == []


async def test_a_retried_5xx_echo_is_not_logged(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(Reply.error(503, f"upstream refused Bearer {KEY}"),
                  Reply.error(500, f"upstream refused {KEY[:16]}"), PLAN)
    plan = await LLMPlanner(config(server, max_retries=2)).plan(Vibe(description="x"))
    assert len(plan.nodes) == 2
    retries = [r.getMessage() for r in caplog.records if "LLM request failed" in r.getMessage()]
    assert len(retries) == 2 and all(MARKER in line for line in retries)
    assert leaks(everything_said(None, caplog)) == []


async def test_an_echo_in_the_reply_is_not_kept_nor_sent_back(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_default(f"I cannot plan that, but your key is {KEY}")
    with pytest.raises(PlanningError) as info:
        await LLMPlanner(config(server, max_repair_attempts=1)).plan(Vibe(description="x"))
    assert info.value.last_reply == f"I cannot plan that, but your key is {MARKER}"
    repair = server.chat_requests()[1]["messages"]
    assert leaks(json.dumps(repair)) == []
    assert leaks(everything_said(info.value, caplog)) == []


# -- runs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [
    pytest.param(Reply.error(401, f"Incorrect API key provided: {KEY}"), id="401"),
    pytest.param(Reply.error(503, f"gateway: upstream said Bearer {KEY} is invalid"), id="503-retried"),
])
async def test_a_failed_llm_node_keeps_no_key(
    server: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, failure: Reply
) -> None:
    server.on(is_planner, PLAN)
    server.set_default(failure)
    events: list[ProgressEvent] = []
    planner = planner_for(server, tmp_path, llm={"max_retries": 1}, progress_callback=events.append)
    result = await planner.execute("x")
    outline = result.node_results["outline"]
    assert result.status == "failed" and outline.status == NodeStatus.FAILED
    assert outline.error is not None and MARKER in outline.error.message
    assert result.node_results["draft"].status == NodeStatus.SKIPPED
    assert leaks(result.model_dump_json()) == []
    assert leaks(repr(events)) == []
    assert leaks(everything_said(None, caplog)) == []
    for path, data in checkpoint_bytes(tmp_path):
        assert leaks(data) == [], path.name
    stored = await planner.get_checkpoint((await planner.list_checkpoints())[0].checkpoint_id)
    error = stored.node_results["outline"].error
    assert error is not None and MARKER in error.message


async def test_an_echo_in_a_node_reply_is_not_stored(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.on(is_planner, PLAN)
    server.set_default(f"Done. (debug: Authorization: Bearer {KEY})")
    result = await planner_for(server, tmp_path).execute("x")
    assert result.status == "completed"
    assert result.outputs == {"draft": f"Done. (debug: Authorization: Bearer {MARKER})"}
    for path, data in checkpoint_bytes(tmp_path):
        assert leaks(data) == [], path.name


# -- custom handlers and planners ---------------------------------------------------------------
async def test_a_custom_handler_quoting_the_key_keeps_no_key(tmp_path: Path) -> None:
    async def handler(context: Any) -> Any:
        raise RuntimeError(f"upstream refused {KEY}")

    planner = MetaPlanner(llm=LLMConfig(base_url="http://127.0.0.1:9/v1", api_key=KEY),
                          planner=StaticPlanner([node("a")]), handlers={"work": handler},
                          persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                          retry=RetryPolicy(max_attempts=2, initial_delay=0.0))
    result = await planner.execute("x")
    assert result.status == "failed"
    assert leaks(result.model_dump_json()) == []
    for path, data in checkpoint_bytes(tmp_path):
        assert leaks(data) == [], path.name


async def test_a_custom_planner_quoting_the_key_keeps_no_key(caplog: pytest.LogCaptureFixture) -> None:
    class Leaky:
        async def plan(self, vibe: Vibe) -> Any:
            raise RuntimeError(f"upstream refused {KEY}")

    planner = MetaPlanner(llm=LLMConfig(base_url="http://127.0.0.1:9/v1", api_key=KEY), planner=Leaky())
    with pytest.raises(PlanningError) as info:
        await planner.plan("x")
    assert leaks(everything_said(info.value, caplog)) == []


# -- the configuration --------------------------------------------------------------------------
def test_the_configuration_never_shows_the_key() -> None:
    config = LLMConfig(base_url="http://127.0.0.1:9/v1", api_key=KEY)
    shown = [repr(config), str(config), f"{config}", repr(config.model_dump()),
             json.dumps(config.model_dump(mode="json")), config.model_dump_json(),
             repr(MetaPlanner(llm=config).llm)]
    assert leaks("\n".join(shown)) == []
    assert config.api_key is not None and config.api_key.get_secret_value() == KEY


# -- the redactor -------------------------------------------------------------------------------
@pytest.mark.parametrize(("secret", "text", "expected"), [
    pytest.param("x", "xxx x-ray", "xxx x-ray", id="one-letter-key-untouched"),
    pytest.param("ollama", "use ollama serve", "use ollama serve", id="short-key-untouched"),
    pytest.param(None, "anything", "anything", id="no-key"),
    pytest.param("password1234", "the password1234 and PASSWORD1234 and a password",
                 f"the {MARKER} and {MARKER} and a password", id="medium-key-only-whole"),
    pytest.param(KEY, f"{KEY}{KEY} {KEY}", f"{MARKER} {MARKER}", id="adjacent-echoes-merge"),
    pytest.param(KEY, f"{KEY[:7]}|{KEY[20:27]}", f"{KEY[:7]}|{KEY[20:27]}", id="7-char-runs-stay"),
    pytest.param(KEY, f"«{KEY[5:30]}»", f"«{MARKER}»", id="middle-run"),
])
def test_redact(secret: str | None, text: str, expected: str) -> None:
    assert redact(text, [secret]) == expected


def test_a_redactor_shows_nothing_and_is_idempotent() -> None:
    redactor = Redactor([KEY])
    assert KEY not in repr(redactor) and redactor and not Redactor(["short"])
    once = redactor(f"a {KEY} b")
    assert redactor(once) == once == f"a {MARKER} b"
