"""The steps plan format: what a small model is asked for, and each way it has gone wrong.

Every test talks to a real HTTP server on loopback (tests/fake_openai.py) through the
``openai`` SDK, as a llama.cpp server would be talked to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains
from vibe_planner import LLMConfig, LLMPlanner, MetaPlanner, PlanningError, Vibe, WorkflowPersistenceManager
from vibe_planner.planning._llm import plan_reply_schema
from vibe_planner.planning._steps import SCHEMA_MAX_STEPS, slugify, steps_to_nodes

pytestmark = pytest.mark.anyio
is_planner = text_contains("You are a planner", roles=["system"])


def steps(*items: tuple[str, list[Any]]) -> str:
    return json.dumps({"steps": [
        {"step": i, "title": title, "instructions": f"Do {title}.", "after": after}
        for i, (title, after) in enumerate(items, start=1)]})


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def config(server: FakeOpenAIServer, **kwargs: Any) -> LLMConfig:
    kwargs.setdefault("retry_initial_delay", 0.01)
    return LLMConfig(model="qwen2.5-coder-0.5b", base_url=server.base_url, api_key="x", **kwargs)


def repair_texts(server: FakeOpenAIServer) -> list[str]:
    return [b["messages"][-1]["content"] for b in server.chat_requests()[1:]]


# -- the schema ---------------------------------------------------------------------------------
def test_the_schema_lets_each_step_follow_only_earlier_steps() -> None:
    schema = plan_reply_schema(["llm", "shell"], max_steps=200)
    plans = schema["properties"]["steps"]["anyOf"]
    assert len(plans) == SCHEMA_MAX_STEPS  # 1..16 steps, each length a tuple of its own
    defs = schema["$defs"]
    assert defs["kind"] == {"enum": ["llm", "shell"]}
    assert defs["title"]["maxLength"] == 60 and defs["title"]["pattern"].startswith("^")
    assert defs["instructions"]["maxLength"] == 600
    for n, plan in enumerate(plans, start=1):
        assert plan["prefixItems"] == [{"$ref": f"#/$defs/step{k}"} for k in range(1, n + 1)]
        assert plan["minItems"] == plan["maxItems"] == n
    for k in range(1, SCHEMA_MAX_STEPS + 1):
        step = defs[f"step{k}"]
        props = step["properties"]
        assert props["step"] == {"const": k}
        assert step["additionalProperties"] is False and set(step["required"]) == set(props)
        assert props["kind"] == {"$ref": "#/$defs/kind"}
        after = props["after"]
        if k == 1:
            assert after["maxItems"] == 0
        else:
            assert after["items"] == {"type": "integer", "minimum": 1, "maximum": k - 1}
            assert after["maxItems"] == min(k - 1, 8)
    assert len(plan_reply_schema(["llm"], max_steps=3)["properties"]["steps"]["anyOf"]) == 3
    assert "kind" not in plan_reply_schema(["llm"])["$defs"]["step1"]["properties"]


def _from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """A strategy for exactly the JSON values the (small subset of JSON schema used) allows."""
    root = root or schema
    if "$ref" in schema:
        return _from_schema(root["$defs"][schema["$ref"].removeprefix("#/$defs/")], root)
    if "anyOf" in schema:
        return st.one_of([_from_schema(s, root) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if kind == "object":
        return st.fixed_dictionaries({k: _from_schema(v, root) for k, v in schema["properties"].items()})
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*[_from_schema(s, root) for s in schema["prefixItems"]]).map(list)
        return st.lists(_from_schema(schema["items"], root), max_size=schema.get("maxItems", 5))
    if kind == "integer":
        return st.integers(schema.get("minimum", -5), schema.get("maximum", 5))
    if kind == "string":
        text = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.text()
        return text.filter(lambda s: schema.get("minLength", 0) <= len(s) <= schema.get("maxLength", 10**6))
    raise AssertionError(f"schema keyword not covered: {schema}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=_from_schema(plan_reply_schema(["llm", "tool"], max_steps=8)))
def test_every_reply_the_schema_allows_is_a_valid_plan(reply: dict[str, Any]) -> None:
    # What grammar-constrained decoding can produce is exactly what the schema allows: each
    # such reply must become a valid DAG, with no repair and no guessing.
    planner = LLMPlanner(LLMConfig(base_url="http://127.0.0.1:9/v1"), kinds=["llm", "tool"])
    plan = planner.parse(json.dumps(reply), Vibe(description="anything"))
    assert len(plan.nodes) == len(reply["steps"])
    for node, step in zip(plan.nodes, reply["steps"], strict=True):
        assert node.kind == step["kind"]
        assert node.depends_on == list(dict.fromkeys(plan.nodes[i - 1].id for i in step["after"]))


def test_ids_are_slugs_of_the_titles_deduplicated() -> None:
    assert slugify("Product Launch: Plan!") == "product-launch-plan"
    assert slugify("Café   crème") == "cafe-creme"
    assert slugify("***") == ""
    nodes = steps_to_nodes([{"title": "Draft"}, {"title": "draft"}, {"title": "!!!"},
                            {"title": "Draft", "after": [1, "draft", 2, 2]}], ["llm"], 10)
    assert [n["id"] for n in nodes] == ["draft", "draft-2", "step-3", "draft-3"]
    assert nodes[3]["depends_on"] == ["draft", "draft-2"]  # by number and by title, once each
    assert nodes[2]["instructions"] == "!!!"  # no instructions: the title says what to do


# -- against the server -------------------------------------------------------------------------
async def test_a_steps_reply_becomes_a_plan_and_sampling_options_go_on_every_request(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server.on(is_planner, steps(("Research the market", []), ("Write copy", [1]),
                                ("Design visuals", [1]), ("Launch email", [2, "Design visuals"])))
    llm = config(server, max_tokens=700, temperature=0.0, top_p=0.9, seed=7,
                 extra_body={"top_k": 20, "repeat_penalty": 1.1})
    planner = MetaPlanner(llm=llm, persistence_manager=WorkflowPersistenceManager(tmp_path))
    result = await planner.execute("launch a product")
    assert result.status == "completed"
    assert [n.id for n in result.plan.nodes] == ["research-the-market", "write-copy", "design-visuals",
                                                "launch-email"]
    assert result.plan.node("launch-email").depends_on == ["write-copy", "design-visuals"]
    bodies = server.chat_requests()
    assert len(bodies) == 5  # the plan and four nodes
    for body in bodies:
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (700, 0.0, 0.9, 7)
        assert (body["top_k"], body["repeat_penalty"]) == (20, 1.1)
    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    assert isinstance(planner.planner, LLMPlanner)
    assert schema == plan_reply_schema(planner.planner.kinds, max_steps=200)


async def test_max_tokens_is_sent_by_default(server: FakeOpenAIServer) -> None:
    server.set_default(steps(("One", [])))
    await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert server.chat_requests()[0]["max_tokens"] == 4096
    await LLMPlanner(config(server, max_tokens=None)).plan(Vibe(description="x"))
    assert "max_tokens" not in server.chat_requests()[1]


async def test_a_reply_cut_at_max_tokens_is_repaired_by_asking_for_less(server: FakeOpenAIServer) -> None:
    runaway = '{"steps": [{"step": 1, "title": "Loop", "instructions": "' + "again " * 200
    server.script(Reply(content=runaway, finish_reason="length"), steps(("Short", [])))
    plan = await LLMPlanner(config(server, max_tokens=256)).plan(Vibe(description="x"))
    assert [n.id for n in plan.nodes] == ["short"]
    repair = repair_texts(server)[0]
    assert "cut off at the max_tokens limit (256 tokens)" in repair
    assert "fewer steps and shorter instructions" in repair


async def test_forward_self_and_unknown_references_are_quoted_in_the_repair(
    server: FakeOpenAIServer,
) -> None:
    # What a 0.5B model wrote without a grammar: step 1 after step 2 (the cycle of the issue,
    # "product-2 -> product-1 -> product-2"), a self-reference and a step that does not exist.
    bad = steps(("Product 1", [2]), ("Product 2", [1]), ("Review", [3, 9, "Pricing"]))
    server.script(bad, steps(("Product 1", []), ("Product 2", [1]), ("Review", [1, 2])))
    plan = await LLMPlanner(config(server)).plan(Vibe(description="two products"))
    assert plan.node("review").depends_on == ["product-1", "product-2"]
    repair = repair_texts(server)[0]
    assert "step 1 ('Product 1') has \"after\": [2]; 2 is not the number of an earlier step" in repair
    assert "(a step may only come after none: leave it empty)" in repair
    assert "step 3 ('Review') has \"after\": [3,9,\"Pricing\"]; 3,9,\"Pricing\" are not" in repair
    assert "steps 1 to 2" in repair
    assert not any(line.startswith("- step 2") for line in repair.splitlines())  # step 2 was right
    assert "Change only what these lines name" in repair


async def test_bad_ids_in_a_nodes_reply_are_quoted_in_the_repair(server: FakeOpenAIServer) -> None:
    # The failure: "nodes.5.id: must match ..." twice, without the value.
    nodes = [{"id": "outline", "instructions": "x"},
             {"id": "Product Launch!", "instructions": "y", "depends_on": ["outline"]}]
    fixed = [nodes[0], {**nodes[1], "id": "product-launch"}]
    server.script(json.dumps({"nodes": nodes}), json.dumps({"nodes": fixed}))
    plan = await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert [n.id for n in plan.nodes] == ["outline", "product-launch"]
    repair = repair_texts(server)[0]
    assert 'node 2 has "id": "Product Launch!"' in repair and "change only that id" in repair


async def test_a_cycle_in_a_nodes_reply_is_named_in_the_repair(server: FakeOpenAIServer) -> None:
    cycle = [{"id": "product-1", "instructions": "A", "depends_on": ["product-2"]},
             {"id": "product-2", "instructions": "B", "depends_on": ["product-1"]}]
    server.script(json.dumps({"nodes": cycle}), steps(("Product 1", []), ("Product 2", [1])))
    plan = await LLMPlanner(config(server)).plan(Vibe(description="x"))
    assert plan.node("product-2").depends_on == ["product-1"]
    assert "dependency cycle: product-2 -> product-1 -> product-2" in repair_texts(server)[0]


async def test_unknown_kinds_and_missing_titles_are_quoted(server: FakeOpenAIServer) -> None:
    server.set_default(json.dumps({"steps": [{"title": "Run it", "kind": "shell"}, {"title": " "}]}))
    with pytest.raises(PlanningError) as info:
        await LLMPlanner(config(server, max_repair_attempts=1)).plan(Vibe(description="x"))
    assert len(info.value.errors) == 2
    assert 'step 2 has "title": " "' in info.value.errors[0]
    assert "step 1 ('Run it') has \"kind\": \"shell\"; use one of ['llm']" in info.value.errors[0]


async def test_too_many_steps_is_refused_with_the_count(server: FakeOpenAIServer) -> None:
    server.set_default(json.dumps({"steps": [{"title": f"S{i}"} for i in range(30)]}))
    with pytest.raises(PlanningError, match=re.escape("the plan has 30 steps; at most 20")):
        await LLMPlanner(config(server, max_repair_attempts=0, max_plan_nodes=20)).plan(
            Vibe(description="x"))


async def test_the_run_duration_counts_planning(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.on(is_planner, Reply(content=steps(("Only", [])), delay=0.6))
    server.set_default("done")
    planner = MetaPlanner(llm=config(server), persistence_manager=WorkflowPersistenceManager(tmp_path))
    result = await planner.execute("slow planner")
    assert result.duration_seconds >= 0.6
