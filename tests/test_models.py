"""The data model (`Vibe`, `WorkflowNode`, `TokenUsage`), `RetryPolicy` and the public face."""

from __future__ import annotations

import hashlib
import inspect
import types
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vibe_planner
from vibe_planner import (
    InvalidVibeError,
    RetryPolicy,
    TokenUsage,
    Vibe,
    VibePlannerError,
    WorkflowNode,
)
from vibe_planner._ids import check_plan_id
from vibe_planner._models import encode_json_bounded

# -- Vibe -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        pytest.param({"description": ""}, "description", "at least 1 character", id="empty"),
        pytest.param({"description": "   "}, "description", "must not be blank", id="spaces"),
        pytest.param({"description": "\n\t \r"}, "description", "must not be blank",
                     id="whitespace"),
        pytest.param({}, "description", "Field required", id="missing"),
        pytest.param({"description": None}, "description", "string", id="none"),
        pytest.param({"description": 42}, "description", "string", id="int"),
        pytest.param({"description": "x" * 100_001}, "description", "at most 100000",
                     id="too-long"),
        pytest.param({"description": "ok", "style": 3}, "style", "string", id="style-int"),
        pytest.param({"description": "ok", "constraints": "short"}, "constraints", "list",
                     id="constraints-str"),
        pytest.param({"description": "ok", "constraints": ["c"] * 101}, "constraints",
                     "at most 100", id="too-many-constraints"),
        pytest.param({"description": "ok", "metadata": {"k": object()}}, "metadata", "",
                     id="metadata-not-json"),
        pytest.param({"description": "ok", "colour": "red"}, "colour", "Extra inputs",
                     id="unknown-field"),
    ],
)
def test_invalid_vibes(data: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidVibeError) as info:
        Vibe(**data)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert isinstance(exc, VibePlannerError)
    assert not isinstance(exc, pydantic.ValidationError)
    assert exc.errors
    assert exc.errors[0].startswith(field)
    assert words in exc.errors[0]
    assert str(exc) == "invalid vibe: " + "; ".join(exc.errors)


def test_every_vibe_problem_is_listed() -> None:
    with pytest.raises(InvalidVibeError) as info:
        Vibe(description=" ", style=1, extra=True)
    fields = sorted(error.split(":")[0] for error in info.value.errors)
    assert fields == ["description", "extra", "style"]


def test_vibe_fields_and_defaults() -> None:
    vibe = Vibe(description="a launch blog post")
    assert vibe.style is None
    assert vibe.constraints == []
    assert vibe.metadata == {}
    assert Vibe(description="  padded  ").description == "  padded  "  # kept as written


def test_vibe_is_frozen() -> None:
    vibe = Vibe(description="tea")
    with pytest.raises(pydantic.ValidationError):
        vibe.description = "coffee"  # type: ignore[misc]


def test_fingerprint_is_pinned() -> None:
    # Changing the fingerprint orphans every existing checkpoint folder: keep it stable.
    vibe = Vibe(description="a haiku about tea")
    canonical = b'{"constraints":[],"description":"a haiku about tea","style":null}'
    assert vibe.fingerprint() == hashlib.sha256(canonical).hexdigest()
    assert vibe.default_plan_id() == "vibe-c108a989f4023b87fbdf40ce"


def test_fingerprint_is_stable_across_instances() -> None:
    first = Vibe(description="a post", style="warm", constraints=["short", "no jargon"])
    again = Vibe(description="a post", style="warm", constraints=["short", "no jargon"])
    assert first.fingerprint() == again.fingerprint() == first.fingerprint()
    assert len(first.fingerprint()) == 64
    int(first.fingerprint(), 16)


def test_fingerprint_ignores_metadata() -> None:
    plain = Vibe(description="a post", style="warm")
    tagged = Vibe(description="a post", style="warm", metadata={"user": 7, "tags": ["x"]})
    assert plain.fingerprint() == tagged.fingerprint()
    assert plain.default_plan_id() == tagged.default_plan_id()


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"description": "a post!"}, id="description"),
        pytest.param({"description": "a post", "style": "warm"}, id="style"),
        pytest.param({"description": "a post", "style": ""}, id="empty-style"),
        pytest.param({"description": "a post", "constraints": ["short"]}, id="constraint"),
        pytest.param({"description": "a post", "constraints": [""]}, id="empty-constraint"),
    ],
)
def test_fingerprint_changes_with_content(other: dict[str, Any]) -> None:
    assert Vibe(description="a post").fingerprint() != Vibe(**other).fingerprint()


def test_fingerprint_is_not_fooled_by_moving_text_between_fields() -> None:
    assert (
        Vibe(description="ab", constraints=["c"]).fingerprint()
        != Vibe(description="a", constraints=["bc"]).fingerprint()
    )
    assert (
        Vibe(description="a", style="b").fingerprint()
        != Vibe(description="a", constraints=["b"]).fingerprint()
    )
    assert (
        Vibe(description="a", constraints=["b", "c"]).fingerprint()
        != Vibe(description="a", constraints=["b,c"]).fingerprint()
    )


def test_default_plan_id_is_a_valid_plan_id() -> None:
    plan_id = Vibe(description="../../etc/passwd \x00 \uff0f").default_plan_id()
    assert check_plan_id(plan_id) == plan_id
    assert plan_id.startswith("vibe-")
    assert len(plan_id) == len("vibe-") + 24


@settings(max_examples=200, deadline=None)
@given(
    description=st.text(min_size=1, max_size=50).filter(lambda s: s.strip()),
    style=st.none() | st.text(max_size=20),
    constraints=st.lists(st.text(max_size=10), max_size=4),
)
def test_property_default_plan_id_is_always_valid(
    description: str, style: str | None, constraints: list[str]
) -> None:
    vibe = Vibe(description=description, style=style, constraints=constraints)
    plan_id = vibe.default_plan_id()
    assert check_plan_id(plan_id) == plan_id
    assert Vibe(**vibe.model_dump()).fingerprint() == vibe.fingerprint()


def test_vibe_round_trips_through_json() -> None:
    vibe = Vibe(description="a post", style="warm", constraints=["short"], metadata={"k": [1]})
    again = Vibe(**orjson.loads(orjson.dumps(vibe.model_dump(mode="json"))))
    assert again == vibe
    assert again.fingerprint() == vibe.fingerprint()


# -- WorkflowNode -----------------------------------------------------------------------------


def test_workflow_node_defaults() -> None:
    node = WorkflowNode(id="brief")
    assert node.kind == "llm"
    assert node.instructions == ""
    assert node.depends_on == []
    assert node.parameters == {}
    assert node.timeout is None
    assert node.max_attempts is None
    assert WorkflowNode(id="other").depends_on is not node.depends_on


def test_workflow_node_accepts_its_documented_fields() -> None:
    node = WorkflowNode(
        id="outline", kind="http.get", instructions="Outline", depends_on=["brief"],
        parameters={"url": "https://example.com", "n": [1, 2]}, timeout=1.5, max_attempts=100,
    )
    assert node.model_dump() == {
        "id": "outline", "kind": "http.get", "instructions": "Outline", "depends_on": ["brief"],
        "parameters": {"url": "https://example.com", "n": [1, 2]}, "timeout": 1.5,
        "max_attempts": 100,
    }


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"kind": "1llm"}, id="kind-leading-digit"),
        pytest.param({"kind": ""}, id="kind-empty"),
        pytest.param({"kind": "a" * 65}, id="kind-too-long"),
        pytest.param({"kind": "l l m"}, id="kind-space"),
        pytest.param({"timeout": 0}, id="timeout-zero"),
        pytest.param({"timeout": -1}, id="timeout-negative"),
        pytest.param({"max_attempts": 0}, id="attempts-zero"),
        pytest.param({"max_attempts": 101}, id="attempts-too-many"),
        pytest.param({"instructions": "x" * 100_001}, id="instructions-too-long"),
        pytest.param({"unknown": 1}, id="extra-field"),
        pytest.param({"id": "a b"}, id="bad-id"),
    ],
)
def test_workflow_node_rejects(data: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        WorkflowNode(**{"id": "n", **data})


# -- TokenUsage -------------------------------------------------------------------------------


def test_token_usage_defaults_to_zero() -> None:
    assert TokenUsage().model_dump() == {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "requests": 0
    }


def test_token_usage_add() -> None:
    a = TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3, requests=1)
    b = TokenUsage(prompt_tokens=10, completion_tokens=20, total_tokens=30, requests=2)
    total = a + b
    assert total == TokenUsage(prompt_tokens=11, completion_tokens=22, total_tokens=33, requests=3)
    assert a == TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3, requests=1)
    assert total is not a
    assert total is not b
    assert a + TokenUsage() == a
    assert sum([a, b, a], TokenUsage()) == a + b + a


usages = st.builds(
    TokenUsage,
    prompt_tokens=st.integers(0, 10**9),
    completion_tokens=st.integers(0, 10**9),
    total_tokens=st.integers(0, 10**9),
    requests=st.integers(0, 10**6),
)


@settings(max_examples=100, deadline=None)
@given(usages, usages, usages)
def test_property_token_usage_add_is_commutative_and_associative(
    a: TokenUsage, b: TokenUsage, c: TokenUsage
) -> None:
    assert a + b == b + a
    assert (a + b) + c == a + (b + c)
    assert (a + b).total_tokens == a.total_tokens + b.total_tokens


# -- RetryPolicy ------------------------------------------------------------------------------


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay) == (3, 0.5, 30.0)
    assert (policy.multiplier, policy.jitter) == (2.0, 0.5)


def test_retry_policy_docstring_example() -> None:
    assert RetryPolicy(max_attempts=5, initial_delay=0.1).delay(3, jitter_draw=0.0) == 0.4


def test_delays_grow_exponentially_until_capped() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3.0, max_delay=100.0, jitter=0.0)
    delays = [policy.delay(attempt) for attempt in range(1, 10)]
    assert delays[:5] == [0.5, 1.5, 4.5, 13.5, 40.5]
    assert delays[5:] == [100.0] * 4
    assert delays == sorted(delays)


def test_delay_is_capped_at_max_delay_for_any_attempt() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=7.0, jitter=0.0)
    assert [policy.delay(n) for n in (4, 5, 50, 100)] == [7.0, 7.0, 7.0, 7.0]


def test_multiplier_one_gives_a_constant_delay() -> None:
    policy = RetryPolicy(initial_delay=2.0, multiplier=1.0, jitter=0.0)
    assert {policy.delay(n) for n in range(1, 20)} == {2.0}


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_jitter_bounds(jitter: float) -> None:
    policy = RetryPolicy(initial_delay=4.0, max_delay=100.0, jitter=jitter)
    base = 8.0  # attempt 2
    assert policy.delay(2, jitter_draw=0.0) == base
    assert policy.delay(2, jitter_draw=1.0) == pytest.approx(base * (1 - jitter))
    assert policy.delay(2, jitter_draw=0.5) == pytest.approx(base * (1 - jitter / 2))
    draws = [policy.delay(2) for _ in range(300)]
    assert all(base * (1 - jitter) <= d <= base for d in draws)
    if jitter:
        assert len(set(draws)) > 1, "random jitter should spread the delays"


def test_retry_after_is_respected() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=30.0, jitter=0.5)
    assert policy.delay(1, retry_after=12.0, jitter_draw=1.0) == 12.0
    assert policy.delay(1, retry_after=12.0) == 12.0
    assert policy.delay(5, retry_after=0.1, jitter_draw=0.0) == 16.0  # the longer wait wins
    assert policy.delay(1, retry_after=0.0, jitter_draw=1.0) == 0.5
    # Beyond max_delay too (the server knows best), though not without bound.
    assert policy.delay(1, retry_after=90.0, jitter_draw=0.0) == 90.0
    assert policy.delay(1, retry_after=1e12, jitter_draw=0.0) <= 300.0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_attempts": 0}, id="no-attempts"),
        pytest.param({"max_attempts": -1}, id="negative-attempts"),
        pytest.param({"initial_delay": -0.1}, id="negative-initial"),
        pytest.param({"max_delay": -1.0}, id="negative-max"),
        pytest.param({"multiplier": 0.5}, id="shrinking"),
        pytest.param({"multiplier": 0.0}, id="zero-multiplier"),
        pytest.param({"jitter": -0.1}, id="negative-jitter"),
        pytest.param({"jitter": 1.5}, id="jitter-above-one"),
    ],
)
def test_retry_policy_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)


def test_retry_policy_is_immutable() -> None:
    with pytest.raises(AttributeError):
        RetryPolicy().max_attempts = 5  # type: ignore[misc]


# -- the public face --------------------------------------------------------------------------


def public_names() -> set[str]:
    return {
        name
        for name, value in vars(vibe_planner).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_is_sorted() -> None:
    assert vibe_planner.__all__ == sorted(vibe_planner.__all__)
    assert len(vibe_planner.__all__) == len(set(vibe_planner.__all__))


def test_all_lists_exactly_the_public_names() -> None:
    assert set(vibe_planner.__all__) == public_names()
    assert "__version__" not in vibe_planner.__all__
    assert isinstance(vibe_planner.__version__, str)


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from vibe_planner import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(vibe_planner.__all__)


def test_exported_exceptions_derive_from_the_root() -> None:
    exceptions = [
        value
        for name in vibe_planner.__all__
        if inspect.isclass(value := getattr(vibe_planner, name))
        and issubclass(value, BaseException)
    ]
    assert len(exceptions) >= 13
    for exc_class in exceptions:
        assert issubclass(exc_class, vibe_planner.VibePlannerError), exc_class
        assert issubclass(exc_class, Exception), exc_class
    assert vibe_planner.VibePlannerError.__bases__ == (Exception,)


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("InvalidVibeError", ValueError),
        ("InvalidIdentifierError", ValueError),
        ("PlanValidationError", ValueError),
        ("NodeOutputError", TypeError),
        ("CheckpointNotFoundError", LookupError),
        ("CheckpointWriteError", OSError),
        ("CheckpointCorruptError", vibe_planner.CheckpointError),
        ("CheckpointMismatchError", vibe_planner.CheckpointError),
    ],
)
def test_exceptions_also_subclass_the_builtin_that_fits(name: str, builtin: type) -> None:
    assert issubclass(getattr(vibe_planner, name), builtin)


# -- output encoding ------------------------------------------------------------------------------

_SCALAR_VALUES = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text()


@given(_SCALAR_VALUES)
def test_property_scalar_outputs_encode_as_inside_a_list(value: Any) -> None:
    # Scalars skip the depth padding that containers go through: the bytes must not change.
    encoded = encode_json_bounded(value)
    assert encode_json_bounded([value]) == b"[" + encoded + b"]"
    assert orjson.loads(encoded) == value


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "\ud800"], ids=["big", "small", "surrogate"])
def test_scalars_json_cannot_hold_are_refused_like_nested_ones(value: Any) -> None:
    with pytest.raises(TypeError):
        encode_json_bounded(value)
    with pytest.raises(TypeError):
        encode_json_bounded([value])
