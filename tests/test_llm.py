"""The LLM planner and ``llm`` handler against a real HTTP server speaking the OpenAI API."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, message_text, text_contains
from vibe_planner import (
    LLMConfig,
    LLMPlanner,
    MetaPlanner,
    NodeStatus,
    PlanningError,
    Vibe,
    WorkflowPersistenceManager,
)

pytestmark = pytest.mark.anyio
SECRET = "sk-test-SECRET-0123456789"
is_planner = text_contains("You are a planner", roles=["system"])


def plan_json(nodes: list[dict[str, Any]]) -> str:
    return json.dumps({"nodes": nodes})


CHAIN = [
    {"id": "outline", "instructions": "Outline the post."},
    {"id": "draft", "instructions": "Draft it.", "depends_on": ["outline"]},
    {"id": "title", "instructions": "Suggest a title."},
    {"id": "final", "instructions": "Polish.", "depends_on": ["draft", "title"]},
]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def config(server: FakeOpenAIServer, **kwargs: Any) -> LLMConfig:
    kwargs.setdefault("retry_initial_delay", 0.01)
    return LLMConfig(model="gpt-4o-mini", base_url=server.base_url, api_key=SECRET, **kwargs)


def planner_for(server: FakeOpenAIServer, tmp_path: Path, **kwargs: Any) -> MetaPlanner:
    llm = config(server, **kwargs.pop("llm", {}))
    return MetaPlanner(llm=llm, persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                       **kwargs)


def node_requests(server: FakeOpenAIServer) -> list[dict[str, Any]]:
    return [b for b in server.chat_requests() if not is_planner(b)]


def planner_requests(server: FakeOpenAIServer) -> list[dict[str, Any]]:
    return [b for b in server.chat_requests() if is_planner(b)]


# -- planning -------------------------------------------------------------------------------------
async def test_plans_with_a_json_schema_and_records_usage(server: FakeOpenAIServer) -> None:
    server.on(is_planner, Reply(content=plan_json(CHAIN),
                                usage={"prompt_tokens": 300, "completion_tokens": 50, "total_tokens": 350}))
    planner = MetaPlanner(llm=config(server))
    plan = await planner.plan(Vibe(description="a blog post", style="warm"))
    assert plan.planner == "llm" and plan.model == "gpt-4o-mini"
    assert [n.id for n in plan.nodes] == ["outline", "draft", "title", "final"]
    assert plan.usage is not None and plan.usage.total_tokens == 350
    body = planner_requests(server)[0]
    assert body["response_format"]["type"] == "json_schema"
    assert "steps" in body["response_format"]["json_schema"]["schema"]["properties"]
    assert "Style: warm" in message_text(body, roles=["user"])


async def test_falls_back_when_the_server_refuses_structured_outputs(server: FakeOpenAIServer) -> None:
    def refuse_schema(body: dict[str, Any]) -> Reply:
        kind = (body.get("response_format") or {}).get("type")
        if kind in ("json_schema", "json_object"):
            return Reply.error(400, f"response_format {kind} is not supported")
        return Reply(content="Here you go:\n```json\n" + plan_json(CHAIN) + "\n```")

    server.set_default(refuse_schema)
    plan = await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert len(plan.nodes) == 4
    kinds = [(b.get("response_format") or {}).get("type") for b in server.chat_requests()]
    assert kinds == ["json_schema", "json_object", None]


async def test_invalid_plans_are_repaired_with_the_precise_error(server: FakeOpenAIServer) -> None:
    cycle = [{"id": "a", "instructions": "A", "depends_on": ["b"]},
             {"id": "b", "instructions": "B", "depends_on": ["a"]}]
    server.script("Sure! I think the plan is: outline, then draft.", plan_json(cycle),
                  plan_json(CHAIN))
    plan = await LLMPlanner(config(server, max_repair_attempts=2)).plan(Vibe(description="x"))
    assert [n.id for n in plan.nodes] == ["outline", "draft", "title", "final"]
    requests = server.chat_requests()
    assert len(requests) == 3
    assert "not valid JSON" in requests[1]["messages"][-1]["content"]
    assert "dependency cycle: b -> a -> b" in requests[2]["messages"][-1]["content"]
    assert plan.usage is not None and plan.usage.requests == 3


async def test_gives_up_with_the_last_reply_and_every_error(server: FakeOpenAIServer) -> None:
    server.set_default(plan_json([{"id": "a", "instructions": "A", "depends_on": ["ghost"]}]))
    with pytest.raises(PlanningError) as info:
        await LLMPlanner(config(server, max_repair_attempts=1)).plan(Vibe(description="x"))
    assert len(server.chat_requests()) == 2
    assert info.value.last_reply is not None and "ghost" in info.value.last_reply
    assert len(info.value.errors) == 2 and "unknown node 'ghost'" in info.value.errors[0]


@pytest.mark.parametrize("reply", [
    pytest.param(plan_json([{"id": f"n{i}", "instructions": "x"} for i in range(100_000)]),
                 id="100k-nodes"),
    pytest.param("[" * 5000 + "]" * 5000, id="deeply-nested"),
    pytest.param(plan_json([{"id": "a", "kind": "shell", "instructions": "rm -rf /"}]),
                 id="unknown-kind"),
    pytest.param(json.dumps({"steps": []}), id="wrong-shape"),
    pytest.param(plan_json([]), id="empty"),
])
async def test_hostile_plans_are_rejected(server: FakeOpenAIServer, reply: str) -> None:
    server.set_default(reply)
    with pytest.raises(PlanningError) as info:
        await LLMPlanner(config(server, max_repair_attempts=0)).plan(Vibe(description="x"))
    assert info.value.errors


async def test_extra_fields_from_the_model_are_ignored(server: FakeOpenAIServer) -> None:
    server.set_default(plan_json([{"id": "a", "name": "A", "description": "?", "instructions": "x"}]))
    plan = await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert plan.nodes[0].id == "a"


# -- transport: retries, timeouts, limits -----------------------------------------------------
async def test_429_waits_for_retry_after_then_succeeds(server: FakeOpenAIServer) -> None:
    server.script(Reply.error(429, "slow down", retry_after=0.3), plan_json(CHAIN))
    started = time.monotonic()
    plan = await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert len(plan.nodes) == 4
    assert time.monotonic() - started >= 0.3
    assert len(server.chat_requests()) == 2


@pytest.mark.parametrize("failure", [
    pytest.param(Reply.error(500, "boom"), id="500"),
    pytest.param(Reply.error(503, "overloaded"), id="503"),
    pytest.param(Reply.dropped(), id="dropped-connection"),
])
async def test_transient_failures_are_retried(server: FakeOpenAIServer, failure: Reply) -> None:
    server.script(failure, failure, plan_json(CHAIN))
    plan = await LLMPlanner(config(server, max_retries=2)).plan(Vibe(description="x"))
    assert len(plan.nodes) == 4 and len(server.chat_requests()) == 3


async def test_the_configured_timeout_really_applies(server: FakeOpenAIServer) -> None:
    # The server answers only when it shuts down: the call can end only by the configured
    # timeout (two attempts of 0.3 s), not the SDK's 600 s, which the hang guard would catch.
    server.set_default(Reply(content=plan_json(CHAIN), delay=600))
    with anyio.fail_after(60), pytest.raises(PlanningError, match=r"timed out after 0\.3s"):
        await LLMPlanner(config(server, timeout=0.3, max_retries=1)).plan(Vibe(description="x"))
    assert len(server.chat_requests()) == 2


async def test_401_fails_at_once_and_never_shows_the_key(
    server: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_default(Reply.error(401, "Incorrect API key provided"))
    planner = planner_for(server, tmp_path)
    with caplog.at_level(logging.DEBUG), pytest.raises(PlanningError) as info:
        await planner.execute("x")
    assert len(server.chat_requests()) == 1
    assert "401" in str(info.value)
    assert server.chat_requests() and server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    for text in (str(info.value), repr(info.value), caplog.text, repr(planner.llm), str(planner.llm)):
        assert SECRET not in text


async def test_permanent_node_failure_is_not_retried(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.on(is_planner, plan_json(CHAIN[:1]))
    server.set_default(Reply.error(400, "bad request: prompt too long"))
    result = await planner_for(server, tmp_path).execute("x")
    assert result.status == "failed"
    error = result.node_results["outline"].error
    assert error is not None and not error.retryable and "400" in error.message
    assert len(node_requests(server)) == 1


async def test_concurrency_limit_holds_at_the_server(server: FakeOpenAIServer, tmp_path: Path) -> None:
    changed, current, peak, answered = threading.Condition(), [0], [0], [0]

    def slow(body: dict[str, Any]) -> str:
        with changed:
            current[0] += 1
            peak[0] = max(peak[0], current[0])
            changed.notify_all()
            # Hold each request until the limit is reached (or every request left is here),
            # so three overlap however slowly the client's requests arrive; a fourth one sent
            # past the limit shows up meanwhile.
            assert changed.wait_for(lambda: current[0] >= 3 or current[0] == 12 - answered[0],
                                    timeout=30), "the client never had three requests out"
            current[0] -= 1
            answered[0] += 1
            changed.notify_all()
        return "done"

    server.on(is_planner, plan_json([{"id": f"n{i}", "instructions": "x"} for i in range(12)]))
    server.set_default(slow)
    planner = planner_for(server, tmp_path, llm={"max_concurrency": 3}, max_concurrency=12)
    result = await planner.execute("parallel")
    assert result.status == "completed"
    assert peak[0] == 3


async def test_requests_per_minute_spaces_requests(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.on(is_planner, plan_json([{"id": f"n{i}", "instructions": "x"} for i in range(5)]))
    planner = planner_for(server, tmp_path, llm={"requests_per_minute": 600})  # one per 0.1 s
    started = time.monotonic()
    await planner.execute("paced")
    # Six requests (plan + 5 nodes) at one per 0.1 s: the sixth cannot start before 0.5 s.
    assert len(server.requests) == 6
    assert time.monotonic() - started >= 0.5


async def test_a_429_pauses_every_request_not_just_the_one(server: FakeOpenAIServer,
                                                           tmp_path: Path) -> None:
    server.on(is_planner, plan_json([{"id": f"n{i}", "instructions": "x"} for i in range(4)]))
    server.on(lambda body: True, Reply.error(429, "rate limited", retry_after=0.4), times=1)
    planner = planner_for(server, tmp_path, llm={"max_concurrency": 1}, max_concurrency=4)
    result = await planner.execute("storm")
    assert result.status == "completed"
    times = [r["monotonic"] for r in server.requests[1:]]  # node requests, in arrival order
    assert len(times) == 5  # four nodes plus the one retry: no storm
    # After the 429, no request at all went out before Retry-After had passed.
    assert all(t - times[0] >= 0.38 for t in times[1:])


# -- nodes ------------------------------------------------------------------------------------------
async def test_nodes_get_instructions_vibe_and_dependency_outputs(server: FakeOpenAIServer,
                                                                  tmp_path: Path) -> None:
    server.on(is_planner, plan_json(CHAIN))
    server.set_default(lambda body: Reply(
        content=f"result of {message_text(body, roles=['user']).split(':')[0]}",
        usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}))
    vibe = Vibe(description="a launch post", style="witty", constraints=["short"])
    result = await planner_for(server, tmp_path).execute(vibe)
    assert result.status == "completed" and not result.offline
    final = next(b for b in node_requests(server) if "'final'" in message_text(b))
    system, user = message_text(final, roles=["system"]), message_text(final, roles=["user"])
    assert "a launch post" in system and "Style: witty" in system and "Constraint: short" in system
    assert "Step 'final': Polish." in user
    assert "Result of step 'draft'" in user and "result of Step 'draft'" in user
    assert result.node_results["draft"].usage is not None
    assert result.node_results["draft"].usage.total_tokens == 15
    plan_usage = result.plan.usage
    assert plan_usage is not None
    assert result.usage.requests == 5 and result.usage.total_tokens == 4 * 15 + plan_usage.total_tokens


async def test_json_nodes_return_parsed_json(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.on(is_planner, plan_json([{"id": "facts", "instructions": "List facts",
                                      "parameters": {"output": "json"}}]))
    server.set_default('{"facts": ["a", "b"]}')
    result = await planner_for(server, tmp_path).execute("json please")
    assert result.outputs == {"facts": {"facts": ["a", "b"]}}
    assert node_requests(server)[0]["response_format"] == {"type": "json_object"}


async def test_resume_never_plans_again_and_never_double_counts(server: FakeOpenAIServer,
                                                               tmp_path: Path) -> None:
    server.on(is_planner, plan_json(CHAIN))
    server.on(text_contains("Step 'title'"), Reply.error(400, "nope"), times=1)
    planner = planner_for(server, tmp_path)
    first = await planner.execute_with_resume("post")
    assert first.status == "failed" and first.node_results["title"].status == NodeStatus.FAILED
    count = len(server.chat_requests())
    second = await planner_for(server, tmp_path).execute_with_resume("post")
    assert second.status == "completed"
    new = server.chat_requests()[count:]
    assert not any(is_planner(b) for b in new)
    assert sorted(message_text(b, roles=["user"]).split(":")[0] for b in new) == [
        "Step 'final'", "Step 'title'"]
    assert second.usage.requests == first.usage.requests + 2


async def test_configuration_from_the_environment(server: FakeOpenAIServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert MetaPlanner().offline
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("VIBE_PLANNER_MODEL", "llama3.1")
    planner = MetaPlanner()
    assert not planner.offline and isinstance(planner.planner, LLMPlanner)
    assert planner.llm is not None and planner.llm.model == "llama3.1"
    assert MetaPlanner(llm=False).offline
    server.set_default(plan_json(CHAIN))
    await planner.plan("x")
    assert server.chat_requests()[0]["model"] == "llama3.1"


async def test_the_key_is_not_in_checkpoints(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.on(is_planner, plan_json(CHAIN))
    await planner_for(server, tmp_path).execute("x")
    files = list((tmp_path / "cp").rglob("*"))
    assert files
    for path in files:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_building_an_llm_planner_needs_no_event_loop() -> None:
    # Apps construct planners at import time, outside any event loop.
    planner = MetaPlanner(llm=LLMConfig(base_url="http://127.0.0.1:9/v1", api_key="x"))
    assert not planner.offline


async def test_a_200_node_plan_does_not_turn_429s_into_a_storm(server: FakeOpenAIServer,
                                                               tmp_path: Path) -> None:
    # A real rate limiter: after a burst of 20 node requests the endpoint refuses everything
    # for 0.3 s (429 with Retry-After). Without a shared pause every request started in that
    # window would be refused too (hundreds); with it, only those already in flight are.
    lock, window, refused = threading.Lock(), [0.0], [0]

    def rate_limited(body: dict[str, Any]) -> Reply:
        with lock:
            now = time.monotonic()
            # ">=": another request may be recorded before this handler takes the lock.
            if len(server.requests) >= 22 and not window[0]:
                window[0] = now + 0.3
            if now < window[0]:
                refused[0] += 1
                # Rounded up: a retry after Retry-After must never land inside the window.
                retry_after = math.ceil((window[0] - now) * 1000) / 1000
                return Reply.error(429, "rate limited", retry_after=retry_after)
        return Reply(content="ok")

    server.on(is_planner, plan_json([{"id": f"n{i}", "instructions": "x"} for i in range(200)]))
    server.set_default(rate_limited)
    planner = planner_for(server, tmp_path, llm={"max_concurrency": 8}, max_concurrency=50)
    result = await planner.execute("two hundred")
    assert result.status == "completed"
    assert 1 <= refused[0] <= 8  # at most the requests in flight when the first 429 came back
    assert len(node_requests(server)) == 200 + refused[0]


async def test_an_llm_handler_set_after_construction_is_the_one_that_runs(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # Nothing derived at construction goes stale: replacing the built-in "llm" handler later
    # takes the LLM out of the node runs (planning still uses it).
    server.on(is_planner, plan_json(CHAIN))
    planner = planner_for(server, tmp_path)

    async def local(context: Any) -> str:
        return f"local {context.node.id}"

    planner.handlers["llm"] = local
    result = await planner.execute("stale handlers")
    assert result.status == "completed" and result.outputs == {"final": "local final"}
    assert len(server.chat_requests()) == 1  # the plan only
    assert not result.offline
