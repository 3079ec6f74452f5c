"""DAG validation: `_dag.topological_order` and `WorkflowPlan` construction."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_planner import (
    PlanValidationError,
    Vibe,
    VibePlannerError,
    WorkflowNode,
    WorkflowPlan,
    _dag,
)

VIBE = Vibe(description="a haiku about tea")


@dataclass(frozen=True)
class N:
    """The least a node needs to be for `topological_order` (the `NodeLike` protocol)."""

    id: str
    depends_on: Sequence[str] = field(default_factory=tuple)


def make_plan(nodes: list[dict[str, Any]] | list[WorkflowNode], plan_id: str = "p") -> WorkflowPlan:
    return WorkflowPlan(plan_id=plan_id, vibe=VIBE, nodes=nodes)


def plan_error(nodes: Any, plan_id: str = "p") -> PlanValidationError:
    with pytest.raises(PlanValidationError) as info:
        WorkflowPlan(plan_id=plan_id, vibe=VIBE, nodes=nodes)
    assert not isinstance(info.value, pydantic.ValidationError)
    return info.value


def assert_valid_order(order: list[str], graph: dict[str, list[str]]) -> None:
    assert len(order) == len(set(order)), "an id appears twice in the order"
    assert set(order) == set(graph)
    position = {node_id: index for index, node_id in enumerate(order)}
    for node_id, deps in graph.items():
        for dep in deps:
            assert position[dep] < position[node_id], f"{node_id} runs before its dependency {dep}"


def cycle_in_message(exc: PlanValidationError) -> list[str]:
    """Return the cycle printed in the error as ``a -> b -> a``, checking its shape."""
    (problem,) = exc.problems
    match = re.fullmatch(r"dependency cycle: (.+)", problem)
    assert match is not None, problem
    cycle = match.group(1).split(" -> ")
    assert len(cycle) >= 3
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a node appears twice inside the cycle"
    return cycle


def assert_cycle_follows_edges(cycle: list[str], graph: dict[str, list[str]]) -> None:
    # "x -> y" reads "x comes before y": y depends on x.
    for before, after in itertools.pairwise(cycle):
        assert before in graph[after], f"{after} does not depend on {before}"


# -- examples ---------------------------------------------------------------------------------


def test_simple_chain_order() -> None:
    plan = make_plan(
        [
            {"id": "c", "depends_on": ["b"]},
            {"id": "a"},
            {"id": "b", "depends_on": ["a"]},
        ]
    )
    assert plan.order == ["a", "b", "c"]
    assert _dag.topological_order([N("c", ["b"]), N("a"), N("b", ["a"])]) == ["a", "b", "c"]


def test_diamond_order_and_sinks() -> None:
    nodes = [
        WorkflowNode(id="join", depends_on=["left", "right"]),
        WorkflowNode(id="left", depends_on=["root"]),
        WorkflowNode(id="right", depends_on=["root"]),
        WorkflowNode(id="root"),
    ]
    plan = make_plan(nodes)
    assert_valid_order(plan.order, {n.id: list(n.depends_on) for n in nodes})
    assert plan.order[0] == "root"
    assert plan.order[-1] == "join"
    assert plan.sinks() == ["join"]
    assert plan.node("left").depends_on == ["root"]
    with pytest.raises(KeyError):
        plan.node("missing")


def test_a_copy_with_other_nodes_is_validated_and_ordered_afresh() -> None:
    plan = make_plan([WorkflowNode(id="a"), WorkflowNode(id="b", depends_on=["a"])])
    assert plan.sinks() == ["b"]  # worked out, and kept, before the copy
    copy = plan.model_copy(update={"nodes": [WorkflowNode(id="x"), WorkflowNode(id="y")]})
    assert copy.order == ["x", "y"] and copy.sinks() == ["x", "y"]
    assert plan.order == ["a", "b"] and plan.sinks() == ["b"]
    with pytest.raises(PlanValidationError, match="cycle"):
        plan.model_copy(update={"nodes": [WorkflowNode(id="a", depends_on=["a2"]),
                                          WorkflowNode(id="a2", depends_on=["a"])]})
    assert plan.model_copy().order == plan.order


def test_single_node_plan() -> None:
    assert make_plan([{"id": "only"}]).order == ["only"]


def test_order_survives_copy_and_revalidation() -> None:
    plan = make_plan([{"id": "b", "depends_on": ["a"]}, {"id": "a"}])
    assert plan.model_copy().order == ["a", "b"]
    assert WorkflowPlan.model_validate(plan.model_dump()).order == ["a", "b"]


def test_plan_validation_error_is_value_error_and_library_error() -> None:
    exc = plan_error([])
    assert isinstance(exc, ValueError)
    assert isinstance(exc, VibePlannerError)


@pytest.mark.parametrize("nodes", [pytest.param([], id="list"), pytest.param((), id="tuple")])
def test_empty_plan(nodes: Sequence[Any]) -> None:
    exc = plan_error(list(nodes))
    assert exc.problems == ["the plan has no nodes"]
    assert exc.node_ids == []
    with pytest.raises(PlanValidationError, match="no nodes"):
        _dag.topological_order(nodes)


def test_duplicate_ids() -> None:
    exc = plan_error([{"id": "a"}, {"id": "b"}, {"id": "a"}])
    assert exc.problems == ["duplicate node id 'a'"]
    assert exc.node_ids == ["a"]
    assert "duplicate node id 'a'" in str(exc)


def test_each_duplicate_is_reported() -> None:
    exc = plan_error([{"id": "a"}, {"id": "a"}, {"id": "b"}, {"id": "b"}, {"id": "a"}])
    assert exc.problems.count("duplicate node id 'a'") == 2
    assert exc.problems.count("duplicate node id 'b'") == 1
    assert exc.node_ids == ["a", "b"]


def test_unknown_dependency() -> None:
    exc = plan_error([{"id": "a"}, {"id": "b", "depends_on": ["a", "ghost"]}])
    assert exc.problems == ["node 'b' depends on unknown node 'ghost'"]
    assert exc.node_ids == ["b"]


def test_dependency_on_a_later_listed_node_is_not_unknown() -> None:
    # Nodes may come in any order: the dependency check must not depend on list position.
    assert make_plan([{"id": "b", "depends_on": ["a"]}, {"id": "a"}]).order == ["a", "b"]


def test_self_dependency() -> None:
    exc = plan_error([{"id": "a", "depends_on": ["a"]}])
    assert exc.problems == ["node 'a' depends on itself"]
    assert exc.node_ids == ["a"]


def test_dependency_listed_twice() -> None:
    exc = plan_error([{"id": "a"}, {"id": "b", "depends_on": ["a", "a"]}])
    assert exc.problems == ["node 'b' lists a dependency twice"]
    assert exc.node_ids == ["b"]


def test_every_problem_is_reported_at_once() -> None:
    exc = plan_error(
        [
            {"id": "a"},
            {"id": "a"},
            {"id": "b", "depends_on": ["nope"]},
            {"id": "c", "depends_on": ["c"]},
        ]
    )
    assert sorted(exc.problems) == sorted(
        [
            "duplicate node id 'a'",
            "node 'b' depends on unknown node 'nope'",
            "node 'c' depends on itself",
        ]
    )
    assert exc.node_ids == ["a", "b", "c"]
    for problem in exc.problems:
        assert problem in str(exc)


def test_problem_list_is_capped() -> None:
    nodes = [N(f"n{i}", [f"ghost{i}"]) for i in range(60)]
    with pytest.raises(PlanValidationError) as info:
        _dag.topological_order(nodes)
    assert len(info.value.problems) == 51
    assert info.value.problems[-1] == "... and 10 more problems"
    assert len(info.value.node_ids) == 60  # every culprit is named even if not every problem


def test_two_node_cycle() -> None:
    exc = plan_error([{"id": "a", "depends_on": ["b"]}, {"id": "b", "depends_on": ["a"]}])
    assert exc.node_ids == ["a", "b"]
    message = str(exc)
    assert "a -> b -> a" in message or "b -> a -> b" in message
    cycle = cycle_in_message(exc)
    assert_cycle_follows_edges(cycle, {"a": ["b"], "b": ["a"]})


def test_three_node_cycle_is_printed_in_dependency_order() -> None:
    graph = {"a": ["c"], "b": ["a"], "c": ["b"]}
    exc = plan_error([{"id": k, "depends_on": v} for k, v in graph.items()])
    assert exc.node_ids == ["a", "b", "c"]
    cycle = cycle_in_message(exc)
    assert set(cycle) == {"a", "b", "c"}
    assert_cycle_follows_edges(cycle, graph)


def test_cycle_names_only_the_cycle_not_what_hangs_off_it() -> None:
    # "0" sorts first and depends on the cycle; "z" is downstream; "root" is fine.
    graph = {
        "0": ["m"],
        "root": [],
        "m": ["n", "root"],
        "n": ["o"],
        "o": ["m"],
        "z": ["o", "0"],
    }
    exc = plan_error([{"id": k, "depends_on": v} for k, v in graph.items()])
    assert exc.node_ids == ["m", "n", "o"]
    cycle = cycle_in_message(exc)
    assert set(cycle) == {"m", "n", "o"}
    assert_cycle_follows_edges(cycle, graph)


def test_one_of_two_disjoint_cycles_is_named() -> None:
    graph = {"a": ["b"], "b": ["a"], "x": ["y"], "y": ["x"], "free": []}
    with pytest.raises(PlanValidationError) as info:
        _dag.topological_order([N(k, v) for k, v in graph.items()])
    assert info.value.node_ids in (["a", "b"], ["x", "y"])
    assert_cycle_follows_edges(cycle_in_message(info.value), graph)


def test_too_many_nodes_with_a_custom_limit() -> None:
    nodes = [N(f"n{i}") for i in range(4)]
    assert len(_dag.topological_order(nodes, max_nodes=4)) == 4
    with pytest.raises(PlanValidationError) as info:
        _dag.topological_order(nodes, max_nodes=3)
    assert info.value.problems == ["the plan has 4 nodes, more than 3"]


def test_too_many_nodes_default_limit() -> None:
    limit = _dag.DEFAULT_MAX_NODES
    chain = [N("n0")] + [N(f"n{i}", [f"n{i - 1}"]) for i in range(1, limit)]
    assert len(_dag.topological_order(chain)) == limit
    with pytest.raises(PlanValidationError, match=f"{limit + 1} nodes, more than {limit}"):
        _dag.topological_order([*chain, N("extra")])


def test_too_many_nodes_in_a_workflow_plan() -> None:
    limit = _dag.DEFAULT_MAX_NODES
    exc = plan_error([{"id": f"n{i}"} for i in range(limit + 1)])
    assert exc.problems == [f"the plan has {limit + 1} nodes, more than {limit}"]


def test_too_many_dependencies_on_one_node() -> None:
    limit = _dag.MAX_DEPENDENCIES
    leaves = [{"id": f"leaf{i}"} for i in range(limit + 1)]
    names = [leaf["id"] for leaf in leaves]
    ok = make_plan([*leaves[:limit], {"id": "hub", "depends_on": names[:limit]}])
    assert ok.order[-1] == "hub"
    exc = plan_error([*leaves, {"id": "hub", "depends_on": names}])
    assert exc.problems == [f"node 'hub' has {limit + 1} dependencies (max {limit})"]
    assert exc.node_ids == ["hub"]


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("a b", id="space"),
        pytest.param("../x", id="traversal"),
        pytest.param("", id="empty"),
        pytest.param("n" * 200, id="200-chars"),
        pytest.param("a/b", id="slash"),
        pytest.param("..", id="dotdot"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param(7, id="not-a-str"),
    ],
)
def test_bad_node_ids(bad_id: object) -> None:
    exc = plan_error([{"id": "fine"}, {"id": bad_id}])
    assert exc.node_ids == ["#1"]
    assert len(exc.problems) == 1
    assert exc.problems[0].startswith("nodes.1.id: ")
    with pytest.raises(pydantic.ValidationError):
        WorkflowNode(id=bad_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("good_id", ["a", "_private", "step:1", "v1.2-final", "A" * 128])
def test_good_node_ids(good_id: str) -> None:
    assert make_plan([{"id": good_id}]).order == [good_id]


@pytest.mark.parametrize(
    "plan_id", [pytest.param("../x", id="traversal"), pytest.param("", id="empty"), "a b"]
)
def test_bad_plan_id(plan_id: str) -> None:
    exc = plan_error([{"id": "a"}], plan_id=plan_id)
    assert exc.problems[0].startswith("plan_id: ")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"nodes": "abc"}, id="nodes-not-a-list"),
        pytest.param({"nodes": [{"id": "a", "surprise": 1}]}, id="extra-node-field"),
        pytest.param({"nodes": [{"id": "a"}], "extra": 1}, id="extra-plan-field"),
        pytest.param({"nodes": [{"id": "a"}], "vibe": {"description": " "}}, id="bad-vibe"),
        pytest.param({"nodes": [{"id": "a", "depends_on": "b"}]}, id="depends-on-a-str"),
    ],
)
def test_other_malformed_plans_raise_plan_validation_error(data: dict[str, Any]) -> None:
    with pytest.raises(PlanValidationError) as info:
        WorkflowPlan(**{"plan_id": "p", "vibe": VIBE, **data})
    assert not isinstance(info.value, pydantic.ValidationError)
    assert info.value.problems


# -- properties -------------------------------------------------------------------------------

_FIRST = "abcxyzABZ019_"
node_ids = st.builds(
    str.__add__, st.sampled_from(_FIRST), st.text(_FIRST + ".:-", max_size=8)
).filter(lambda s: ".." not in s)


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1) -> tuple[list[str], list[list[int]], list[int]]:
    """Return (ids, deps, listing order): node i depends only on nodes < i."""
    size = draw(st.integers(min_size, 20))
    ids = draw(st.lists(node_ids, min_size=size, max_size=size, unique=True))
    deps = [
        draw(st.lists(st.integers(0, i - 1), unique=True, max_size=4)) if i else []
        for i in range(size)
    ]
    listing = draw(st.permutations(range(size)))
    return ids, deps, listing


def as_dicts(ids: list[str], deps: list[list[int]], listing: list[int]) -> list[dict[str, Any]]:
    return [{"id": ids[i], "depends_on": [ids[j] for j in deps[i]]} for i in listing]


def ancestors(start: int, deps: list[list[int]]) -> set[int]:
    seen: set[int] = set()
    stack = list(deps[start])
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(deps[node])
    return seen


@settings(max_examples=200, deadline=None)
@given(dags())
def test_property_forward_only_graphs_always_validate(
    dag: tuple[list[str], list[list[int]], list[int]],
) -> None:
    ids, deps, listing = dag
    nodes = as_dicts(ids, deps, listing)
    plan = make_plan(nodes)
    assert_valid_order(plan.order, {n["id"]: n["depends_on"] for n in nodes})
    assert plan.order == _dag.topological_order(plan.nodes)


@settings(max_examples=200, deadline=None)
@given(dags(min_size=2), st.data())
def test_property_a_back_edge_is_reported_as_a_cycle(
    dag: tuple[list[str], list[list[int]], list[int]], data: st.DataObject
) -> None:
    ids, deps, listing = dag
    candidates = [j for j in range(len(ids)) if deps[j]]
    if not candidates:
        deps[1] = [0]
        candidates = [1]
    late = data.draw(st.sampled_from(candidates), label="late")
    early = data.draw(st.sampled_from(sorted(ancestors(late, deps))), label="early")
    deps[early] = [*deps[early], late]  # early now depends on late, which depends on early

    # The nodes that lie on some cycle are those in the strongly connected component of early.
    upstream = ancestors(early, deps)
    on_cycle = {x for x in upstream if early in ancestors(x, deps)} | {early}
    with pytest.raises(PlanValidationError) as info:
        make_plan(as_dicts(ids, deps, listing))
    named = info.value.node_ids
    assert len(named) >= 2
    assert named == sorted(named)
    assert set(named) <= {ids[x] for x in on_cycle}
    graph = {ids[i]: [ids[j] for j in deps[i]] for i in range(len(ids))}
    cycle = cycle_in_message(info.value)
    assert set(cycle) == set(named)
    assert_cycle_follows_edges(cycle, graph)


def oracle_is_valid(graph: list[tuple[str, list[str]]]) -> bool:
    ids = [node_id for node_id, _ in graph]
    if not ids or len(set(ids)) != len(ids):
        return False
    for node_id, deps in graph:
        if len(set(deps)) != len(deps) or node_id in deps or not set(deps) <= set(ids):
            return False
    remaining = dict(graph)
    while remaining:  # peel off nodes whose dependencies are all gone; stuck means a cycle
        ready = [k for k, v in remaining.items() if not set(v) & remaining.keys()]
        if not ready:
            return False
        for key in ready:
            del remaining[key]
    return True


pool = ["a", "b", "c", "d", "e", "f", "g", "h"]
random_graphs = st.lists(
    st.tuples(st.sampled_from(pool), st.lists(st.sampled_from([*pool, "ghost"]), max_size=4)),
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(random_graphs)
def test_property_any_graph_validates_or_raises_plan_validation_error(
    graph: list[tuple[str, list[str]]],
) -> None:
    nodes = [{"id": node_id, "depends_on": deps} for node_id, deps in graph]
    if not oracle_is_valid(graph):
        exc = plan_error(nodes)
        assert exc.problems
        assert set(exc.node_ids) <= {node_id for node_id, _ in graph}
        return
    plan = make_plan(nodes)  # anything but PlanValidationError escapes and fails the test
    assert_valid_order(plan.order, dict(graph))


@settings(max_examples=200, deadline=None)
@given(random_graphs)
def test_property_topological_order_agrees_with_workflow_plan(
    graph: list[tuple[str, list[str]]],
) -> None:
    nodes = [N(node_id, deps) for node_id, deps in graph]
    try:
        order = _dag.topological_order(nodes)
    except PlanValidationError:
        assert not oracle_is_valid(graph)
    else:
        assert oracle_is_valid(graph)
        assert_valid_order(order, dict(graph))
