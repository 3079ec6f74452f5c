"""Tests for the fake OpenAI server in ``tests/fake_openai.py``, driven by the real SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

try:  # works whether or not ``tests`` is importable as a package
    from tests.fake_openai import FakeOpenAIServer, Reply, text_contains
except ImportError:  # pragma: no cover - depends on pytest import mode / sys.path
    from fake_openai import (  # type: ignore[import-not-found,no-redef]
        FakeOpenAIServer,
        Reply,
        text_contains,
    )

FAKE_SERVER_SCRIPT = Path(__file__).with_name("fake_openai.py")
USER_HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def client(srv: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0) as c:
        yield c


def test_completion_round_trip_with_usage(srv: FakeOpenAIServer, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-test", messages=USER_HI, temperature=0)

    assert resp.object == "chat.completion"
    assert resp.model == "gpt-test"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "echo: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    (record,) = srv.requests
    assert record["method"] == "POST"
    assert record["path"] == "/v1/chat/completions"
    assert record["headers"]["authorization"] == "Bearer test"
    assert srv.chat_requests() == [record["body"]]
    assert record["body"]["temperature"] == 0


def test_explicit_usage_and_models(srv: FakeOpenAIServer, client: openai.OpenAI) -> None:
    srv.script(
        Reply(
            content="scripted",
            usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        )
    )
    resp = client.chat.completions.create(model="m", messages=USER_HI)
    assert resp.choices[0].message.content == "scripted"
    assert resp.usage is not None
    assert resp.usage.total_tokens == 10

    assert [m.id for m in client.models.list()] == srv.models
    assert srv.chat_requests() == [srv.requests[0]["body"]]  # GET /v1/models is not a chat request


def test_routing_queue_rules_and_default(srv: FakeOpenAIServer, client: openai.OpenAI) -> None:
    plan = json.dumps({"nodes": ["a", "b"]})
    srv.on(text_contains("PLAN", roles=["system"]), Reply(content=plan))
    srv.on(lambda body: body["model"] == "flaky", Reply.error(500, "once"), times=1)
    srv.set_default(lambda body: "node:" + body["messages"][-1]["content"])
    srv.script("queued first")

    def ask(text: str, system: str = "you are a node", model: str = "m") -> str | None:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        return client.chat.completions.create(model=model, messages=msgs).choices[0].message.content  # type: ignore[arg-type]

    assert ask("x", system="PLAN it") == "queued first"  # queue beats rules
    assert ask("x", system="PLAN it") == plan
    assert ask("PLAN in user text only") == "node:PLAN in user text only"
    with pytest.raises(openai.InternalServerError):
        ask("y", model="flaky")
    assert ask("y", model="flaky") == "node:y"  # rule exhausted after times=1
    assert srv.pending == 0
    assert srv.errors == []


def test_rate_limit_reaches_client_with_retry_after(
    srv: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    srv.script(Reply.error(429, "Rate limit reached", retry_after=3))

    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(model="m", messages=USER_HI)

    err = excinfo.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "3"
    assert err.code == "rate_limit_exceeded"
    assert err.body == {
        "message": "Rate limit reached",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert len(srv.chat_requests()) == 1  # max_retries=0: no retry


def test_stream_true_is_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="m", messages=USER_HI, stream=True)
    assert excinfo.value.param == "stream"


def test_drop_gives_connection_error(srv: FakeOpenAIServer, client: openai.OpenAI) -> None:
    srv.script(Reply(drop=True))
    with pytest.raises(openai.APIConnectionError) as excinfo:
        client.chat.completions.create(model="m", messages=USER_HI)
    assert not isinstance(excinfo.value, openai.APITimeoutError)
    # the server keeps serving afterwards
    assert client.chat.completions.create(model="m", messages=USER_HI).choices[0].message.content


def test_delay_beyond_client_timeout_gives_timeout_error(srv: FakeOpenAIServer) -> None:
    # The reply would come only when the server shuts down: a timeout is the only way out.
    srv.script(Reply(content="too late", delay=600))
    with openai.OpenAI(
        base_url=srv.base_url, api_key="test", max_retries=0, timeout=0.2
    ) as slow_client, pytest.raises(openai.APITimeoutError):
        slow_client.chat.completions.create(model="m", messages=USER_HI)
    assert len(srv.chat_requests()) == 1


@pytest.mark.anyio
async def test_async_client_round_trip(srv: FakeOpenAIServer) -> None:
    srv.script(Reply.error(503, "overloaded"))
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="test", max_retries=0) as aclient:
        with pytest.raises(openai.InternalServerError) as excinfo:
            await aclient.chat.completions.create(model="m", messages=USER_HI)
        assert excinfo.value.status_code == 503

        raw = await aclient.chat.completions.with_raw_response.create(model="m", messages=USER_HI)
        assert raw.headers["x-request-id"].startswith("req_fake_")
        completion = raw.parse()
        assert completion.choices[0].message.content == "echo: hello there"


def _wait_for_port(port_file: Path, proc: subprocess.Popen[bytes], deadline_s: float = 60.0) -> int:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fake server exited early with {proc.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        time.sleep(0.02)
    raise AssertionError("fake server did not write its port file in time")


def test_standalone_process_port_file_script_and_log(tmp_path: Path) -> None:
    port_file, log_file, script_file = (
        tmp_path / "port",
        tmp_path / "requests.jsonl",
        tmp_path / "script.json",
    )
    plan = {"nodes": [{"id": "a"}]}
    script_file.write_text(
        json.dumps(
            {
                "default": {"mode": "echo"},
                "rules": [{"match_substring": "PLAN", "content_json": plan}],
            }
        )
    )

    proc = subprocess.Popen(
        [
            sys.executable,
            str(FAKE_SERVER_SCRIPT),
            "--port-file",
            str(port_file),
            "--script",
            str(script_file),
            "--log",
            str(log_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port = _wait_for_port(port_file, proc)
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="test", max_retries=0
        ) as c:
            planned = c.chat.completions.create(
                model="m", messages=[{"role": "system", "content": "PLAN this"}, *USER_HI]
            )
            echoed = c.chat.completions.create(model="m", messages=USER_HI)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=10)

    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    assert json.loads(planned.choices[0].message.content or "") == plan
    assert echoed.choices[0].message.content == "echo: hello there"
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [entry["path"] for entry in lines] == ["/v1/chat/completions"] * 2
    assert [entry["n"] for entry in lines] == [1, 2]
    assert lines[1]["body"]["messages"] == USER_HI


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM semantics")
def test_standalone_process_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_SERVER_SCRIPT), "--port-file", str(port_file)],
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port_file, proc)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr.decode()
