"""Servers that echo the API key in every shape they can think of: it never comes out.

Keys of several kinds (OpenAI and Anthropic style, base64-like with ``+/=``, hex) are echoed
whole, cut, masked, repeated, re-cased, JSON-escaped, as header dumps, percent-encoded and
base64-encoded, in error bodies of every status (401, 403, 404, 422, 400 with its format
fallbacks, retried 429s and 5xx) and in replies. Through a real `openai` client against the
fake server: no run of 8 characters of the key, in any letter case, nor any encoding of it,
appears in exception strings and tracebacks, log records at DEBUG, progress events, results,
or any byte under the checkpoint folder. A property test covers the redactor alone.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import string
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains
from tests.torture.support import Tally
from vibe_planner import (
    LLMConfig,
    LLMPlanner,
    MetaPlanner,
    PlanningError,
    ProgressEvent,
    RetryPolicy,
    Vibe,
    WorkflowPersistenceManager,
)
from vibe_planner._redact import FRAGMENT, Redactor

_rng = random.Random(2024)
_TOKEN = string.ascii_letters + string.digits + "_-"
KEYS = {
    "openai": "sk-proj-" + "".join(_rng.choices(string.ascii_letters + string.digits, k=40)),
    "anthropic": "sk-ant-api03-" + "".join(_rng.choices(_TOKEN, k=60)),
    "base64ish": base64.b64encode(_rng.randbytes(33)).decode()[:-2] + "+/==",
    "hex": "".join(_rng.choices("0123456789abcdef", k=32)),
}
is_planner = text_contains("You are a planner", roles=["system"])
Shape = Callable[[str], str]


def _percent_all(key: str, upper: bool) -> str:
    return "".join((f"%{b:02X}" if upper else f"%{b:02x}") for b in key.encode())


SHAPES: dict[str, Shape] = {
    "whole": lambda k: k,
    "prefix": lambda k: f"{k} is not a valid key",
    "suffix": lambda k: f"Incorrect API key provided: {k}",
    "middle": lambda k: f"Incorrect API key provided: {k}. You can find your key at https://x/keys.",
    "no-space": lambda k: f"key={k};next",
    "bearer": lambda k: f"Authorization: Bearer {k}",
    "repeated": lambda k: " ".join([k] * 3),
    "back-to-back": lambda k: k + k,
    "lines": lambda k: f"first {k}\nsecond {k}\r\nthird",
    "upper": lambda k: f"bad key {k.upper()}",
    "lower": lambda k: f"bad key {k.lower()}",
    "swapcase": lambda k: f"bad key {k.swapcase()}",
    "json-escaped": lambda k: json.dumps({"error": {"key": k, "why": 'said "no"'}}),
    "json-twice": lambda k: json.dumps(json.dumps({"auth": f"Bearer {k}"})),
    "python-repr": lambda k: repr({"api_key": k}),
    "headers-as-text": lambda k: f"POST /v1/chat\r\nAuthorization: Bearer {k}\r\nX-Api-Key: {k}\r\n\r\n",
    "html": lambda k: f"<html><body><p>Key <code>{k}</code> rejected</p></body></html>",
    "quoted": lambda k: f"«{k}» '{k}' \"{k}\"",
    "head-8": lambda k: f"key {k[:8]}... rejected",
    "head-13": lambda k: f"key {k[:13]}... rejected",
    "tail-8": lambda k: f"key ...{k[-8:]} rejected",
    "tail-12": lambda k: f"key ...{k[-12:]} rejected",
    "inner-8": lambda k: f"fragment {k[11:19]} fragment",
    "inner-20": lambda k: f"fragment {k[5:25]} fragment",
    "all-but-one": lambda k: f"key {k[:-1]}",
    "masked": lambda k: f"{k[:10]}{'*' * (len(k) - 14)}{k[-4:]}",
    "masked-middle": lambda k: f"{k[:4]}***{k[10:30]}***{k[-4:]}",
    "query": lambda k: f"GET /v1/models?api_key={urllib.parse.quote(k, safe='')}&x=1",
    "query-plus": lambda k: f"key={urllib.parse.quote_plus(k)}",
    "percent-upper": lambda k: _percent_all(k, upper=True),
    "percent-lower": lambda k: _percent_all(k, upper=False),
    "base64": lambda k: f"token {base64.b64encode(k.encode()).decode()}",
    "base64-urlsafe": lambda k: f"token {base64.urlsafe_b64encode(k.encode()).decode()}",
    "base64-unpadded": lambda k: base64.b64encode(k.encode()).decode().rstrip("="),
    "basic-auth": lambda k: f"Basic {base64.b64encode(f'user:{k}'.encode()).decode()}",
    "basic-auth-2": lambda k: f"Basic {base64.b64encode(f'ab:{k}'.encode()).decode()}",
    "bearer-base64": lambda k: base64.b64encode(f"Bearer {k}".encode()).decode(),
    "unicode-around": lambda k: f"ключ→{k}←キー",
}


def forbidden(key: str) -> set[str]:
    """Lower-cased strings that must never appear: every 8-run of the key and its encodings."""
    forms = {key, _percent_all(key, upper=False)}
    for prefix in ("", "u", "ab:", "user:", "Bearer "):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            # The characters that depend on the key's bits alone.
            bits_before, bits_key = 8 * len(prefix.encode()), 8 * len(key.encode())
            start, end = -(-bits_before // 6), (bits_before + bits_key) // 6
            forms.add(encode((prefix + key).encode()).decode()[start:end])
    runs: set[str] = set()
    for form in forms:
        width = max(FRAGMENT, FRAGMENT * len(form) // len(key))
        runs |= {form[i : i + width].lower() for i in range(len(form) - width + 1)}
    return runs


FORBIDDEN = {name: forbidden(key) for name, key in KEYS.items()}


def leaks(text: str | bytes, key_name: str) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lowered = text.lower()
    return sorted(run for run in FORBIDDEN[key_name] if run in lowered)


def said(exc: BaseException | None, caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text, *(r.getMessage() for r in caplog.records)]
    if exc is not None:
        parts += [str(exc), repr(exc), repr(vars(exc)), "".join(traceback.format_exception(exc))]
    return "\n".join(parts)


@pytest.fixture
def anyio_backend() -> str:
    # Redaction does not depend on the event loop (tests/test_secrets.py runs both): one is
    # enough for the sweeps.
    return "asyncio"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def config(server: FakeOpenAIServer, key: str, **kwargs: Any) -> LLMConfig:
    return LLMConfig(base_url=server.base_url, api_key=key, retry_initial_delay=0.0,
                     max_retries=1, **kwargs)


def test_every_shape_really_shows_every_key() -> None:
    for name, key in KEYS.items():
        for shape_name, shape in SHAPES.items():
            assert leaks(shape(key), name), (name, shape_name)


def test_the_redactor_alone_sweeps_every_shape(long_mode: bool, tally: Tally) -> None:
    rng = random.Random(5)
    keys = dict(KEYS)
    for i in range(200 if long_mode else 20):  # random keys of every length a fragment needs
        keys[f"random-{i}"] = "".join(rng.choices(_TOKEN + "+/=", k=rng.randint(16, 120)))
    for name, key in keys.items():
        redact, runs = Redactor([key]), FORBIDDEN.get(name) or forbidden(key)
        for shape_name, shape in SHAPES.items():
            for wrap in ("{}", "x{}x", "{}\n{}", "{} and then {}"):
                text = redact(wrap.format(shape(key), shape(key)))
                assert not [run for run in runs if run in text.lower()], (name, shape_name, wrap)
                tally.add("secret echoes redacted")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.text(_TOKEN + "+/=", min_size=16, max_size=90), before=st.text(max_size=40),
       after=st.text(max_size=40), data=st.data())
def test_no_run_of_8_survives(key: str, before: str, after: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(key) - FRAGMENT))
    end = data.draw(st.integers(start + FRAGMENT, len(key)))
    piece = data.draw(st.sampled_from([str.lower, str.upper, str.swapcase, str]))(key[start:end])
    out = Redactor([key])(before + piece + after).lower()
    assert not any(key[i : i + FRAGMENT].lower() in out for i in range(len(key) - FRAGMENT + 1))


STATUSES = [401, 403, 404, 422, 400, 429, 500, 503]
"""Error statuses echoed: refused at once, after the format fallbacks (400), or retried."""
ANSWERS: list[Callable[[str], Reply]] = [
    lambda text: Reply.error(401, text),
    lambda text: Reply.error(422, text),
    lambda text: Reply.error(429, text),
    lambda text: Reply.error(503, text),
    lambda text: Reply(content=text),
]
"""How a node's request is answered: refused, retried until the node fails, or a reply."""


@pytest.mark.anyio
async def test_planning_errors_never_show_the_key(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture, tally: Tally, long_mode: bool
) -> None:
    # The fast subset gives each shape one key and one status in turn (every key and every
    # status come up several times); the long mode tries every key with every status.
    caplog.set_level(logging.DEBUG)
    names = list(KEYS)
    for i, (shape_name, shape) in enumerate(SHAPES.items()):
        cases = ([(name, status) for name in names for status in STATUSES] if long_mode
                 else [(names[i % len(names)], STATUSES[i % len(STATUSES)])])
        for key_name, status in cases:
            caplog.clear()
            server.reset()
            server.set_default(Reply.error(status, shape(KEYS[key_name])))
            with pytest.raises(PlanningError) as info:
                await LLMPlanner(config(server, KEYS[key_name])).plan(Vibe(description="x"))
            assert leaks(said(info.value, caplog), key_name) == [], (shape_name, key_name, status)
            tally.add("secret echoes in planning errors")


@pytest.mark.anyio
@pytest.mark.parametrize("key_name", list(KEYS))
async def test_runs_never_store_the_key(
    server: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, tally: Tally,
    long_mode: bool, key_name: str,
) -> None:
    # One node per shape and answer (two answers in turn per shape in the fast subset); every
    # node's request gets its own echo, and one node depends on failed ones (it is skipped).
    caplog.set_level(logging.DEBUG)
    key = KEYS[key_name]
    nodes, failing = [], 0
    for i, shape in enumerate(SHAPES.values()):
        for j in range(len(ANSWERS)) if long_mode else [i % len(ANSWERS), (i + 2) % len(ANSWERS)]:
            node_id = f"n{i}-{j}"
            nodes.append({"id": node_id, "instructions": "go"})
            server.on(text_contains(f"Step '{node_id}'"), ANSWERS[j](shape(key)))
            failing += j != len(ANSWERS) - 1
    nodes.append({"id": "last", "instructions": "sum up", "depends_on": [n["id"] for n in nodes]})
    server.on(is_planner, json.dumps({"nodes": nodes}))
    events: list[ProgressEvent] = []
    planner = MetaPlanner(llm=config(server, key, max_concurrency=16), max_concurrency=16,
                          persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                          retry=RetryPolicy(max_attempts=2, initial_delay=0.0),
                          checkpoint_interval=7, progress_callback=events.append)
    result = await planner.execute("echo everything")
    assert result.status == "failed"
    assert len([r for r in result.node_results.values() if r.error is not None]) == failing + 1
    assert leaks(result.model_dump_json(), key_name) == []
    assert leaks(repr(events), key_name) == []
    assert leaks(said(None, caplog), key_name) == []
    files = [p for p in (tmp_path / "cp").rglob("*") if p.is_file()]
    assert any(p.name.startswith("cp-") for p in files)
    for path in files:
        assert leaks(path.read_bytes(), key_name) == [], path.name
    tally.add("secret echoes in runs", len(nodes) - 1)
