"""One retry policy for node retries and LLM requests: a huge or malformed Retry-After is capped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains
from tests.helpers import StaticPlanner, node
from vibe_planner import (
    LLMConfig,
    LLMPlanner,
    MetaPlanner,
    NodeContext,
    NodeError,
    RetryPolicy,
    Vibe,
    WorkflowPersistenceManager,
)

pytestmark = pytest.mark.anyio
PLAN = json.dumps({"nodes": [{"id": "a", "instructions": "A."}, {"id": "b", "instructions": "B.",
                                                                  "depends_on": ["a"]}]})
# Without the cap, any of these waits would outlast the hang guard by hours.
HANG_GUARD = 60


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.mark.parametrize(("retry_after", "expected"), [
    pytest.param(86400, 0.5, id="a-day"),
    pytest.param(0.02, 0.02, id="small"),
    pytest.param(float("inf"), None, id="inf"),
    pytest.param(float("nan"), None, id="nan"),
    pytest.param(-3, None, id="negative"),
    pytest.param("soon", None, id="not-a-number"),
    pytest.param(True, None, id="bool"),
    pytest.param(None, None, id="absent"),
])
def test_cap_retry_after(retry_after: object, expected: float | None) -> None:
    policy = RetryPolicy(max_delay=0.05)
    assert policy.cap_retry_after(retry_after) == expected  # type: ignore[arg-type]
    delay = policy.delay(1, retry_after=retry_after, jitter_draw=0.0)  # type: ignore[arg-type]
    assert delay == max(0.05 if expected is None else expected, min(policy.initial_delay, 0.05))


def test_an_llm_config_yields_its_retry_policy() -> None:
    config = LLMConfig(max_retries=3, retry_initial_delay=0.2, retry_max_delay=2.0)
    assert config.retry_policy() == RetryPolicy(max_attempts=4, initial_delay=0.2, max_delay=2.0)


@pytest.mark.parametrize("header", [
    pytest.param("86400", id="a-day-in-seconds"),
    pytest.param("Fri, 31 Dec 2100 23:59:59 GMT", id="a-date-decades-away"),
    pytest.param("1e999", id="overflowing"),
    pytest.param("soon", id="not-a-number"),
    pytest.param("Wed, 99 Foo 2026 99:99:99 GMT", id="a-broken-date"),
    pytest.param("-5", id="negative"),
])
async def test_a_huge_or_malformed_retry_after_is_capped_for_everyone(
    server: FakeOpenAIServer, tmp_path: Path, header: str
) -> None:
    # Planning gets a 429 with the header; the shared limiter then must not stall the plan's
    # node requests either (they share the pause with planning).
    server.on(text_contains("You are a planner", roles=["system"]),
              Reply.error(429, "slow down", headers={"Retry-After": header}), times=1)
    server.on(text_contains("You are a planner", roles=["system"]), PLAN)
    server.set_default("done")
    llm = LLMConfig(base_url=server.base_url, api_key="sk-test", retry_initial_delay=0.001,
                    retry_max_delay=0.01)
    planner = MetaPlanner(llm=llm, persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"))
    with anyio.fail_after(HANG_GUARD):
        result = await planner.execute_with_resume("capped")
    assert result.status == "completed"
    assert len(server.chat_requests()) == 4  # the refused plan, the plan, two nodes


async def test_the_planner_alone_caps_retry_after_ms(server: FakeOpenAIServer) -> None:
    server.script(Reply.error(429, "slow down", headers={"Retry-After-Ms": "86400000"}), PLAN)
    config = LLMConfig(base_url=server.base_url, api_key="sk-test", retry_max_delay=0.01)
    with anyio.fail_after(HANG_GUARD):
        plan = await LLMPlanner(config).plan(Vibe(description="x"))
    assert [n.id for n in plan.nodes] == ["a", "b"]


async def test_a_node_asking_for_a_day_is_retried_within_the_cap(tmp_path: Path) -> None:
    attempts: list[int] = []

    async def work(ctx: NodeContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise NodeError("come back tomorrow", retry_after=86400)
        return "ok"

    planner = MetaPlanner(planner=StaticPlanner([node("a")]), handlers={"work": work},
                          persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                          retry=RetryPolicy(max_attempts=2, initial_delay=0.001, max_delay=0.001))
    with anyio.fail_after(HANG_GUARD):
        result = await planner.execute_with_resume("tomorrow")
    assert result.status == "completed" and attempts == [1, 2]
