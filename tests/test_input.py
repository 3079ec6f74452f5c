"""Human input inside one process: request_input, the approval kind, answers, deadlines, wake-ups."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.helpers import StaticPlanner
from vibe_planner import (
    CheckpointCorruptError,
    CheckpointInfo,
    CheckpointWritten,
    InvalidAnswerError,
    LLMConfig,
    LLMPlanner,
    MemoryCheckpointStore,
    MetaPlanner,
    NodeAnswered,
    NodeContext,
    NodeWaiting,
    OfflinePlanner,
    PlanNotWaitingError,
    ProgressEvent,
    RequestExpiredError,
    Vibe,
    WorkflowNode,
    WorkflowPersistenceManager,
)
from vibe_planner.execution._schema import check_schema, validate
from vibe_planner.persistence._codec import encode_checkpoint, peek_summary
from vibe_planner.planning._offline import asks_for_review

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def make(checkpoint_dir: Path, nodes: list[WorkflowNode], handlers: dict[str, Any] | None = None,
         **options: Any) -> MetaPlanner:
    return MetaPlanner(planner=StaticPlanner(nodes), handlers=handlers or {},
                       persistence_manager=WorkflowPersistenceManager(checkpoint_dir), **options)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


# -- the schema subset ----------------------------------------------------------------------------
APPROVAL = {"type": "object", "properties": {"approved": {"type": "boolean"}, "n": {"type": "integer"}},
            "required": ["approved"], "additionalProperties": False}


@pytest.mark.parametrize(("value", "schema", "problem"), [
    pytest.param(True, {"type": "boolean"}, None, id="boolean"),
    pytest.param(1, {"type": "boolean"}, "expected boolean, got integer", id="one-is-not-true"),
    pytest.param(True, {"type": "integer"}, "expected integer, got boolean", id="true-is-not-one"),
    pytest.param(2.0, {"type": "integer"}, None, id="integral-float"),
    pytest.param({"approved": True, "n": 3}, APPROVAL, None, id="object"),
    pytest.param({"n": 3}, APPROVAL, "missing required property 'approved'", id="required"),
    pytest.param({"approved": True, "x": 1}, APPROVAL, "unexpected property 'x'", id="additional"),
    pytest.param({"approved": True, "n": "3"}, APPROVAL, "$.n: expected integer", id="nested"),
    pytest.param("stop", {"enum": ["go", "stop"]}, None, id="enum"),
    pytest.param("halt", {"enum": ["go", "stop"]}, "must be one of", id="enum-miss"),
    pytest.param([1, 2], {"type": "array", "items": {"type": "integer"}, "maxItems": 1}, "more than 1",
                 id="max-items"),
    pytest.param(["a", 2], {"type": "array", "items": {"type": "string"}}, "$[1]: expected string",
                 id="items"),
    pytest.param("ab", {"type": "string", "minLength": 3}, "shorter than 3", id="min-length"),
    pytest.param("abc", {"type": "string", "pattern": "^a"}, None, id="pattern"),
    pytest.param(11, {"type": "number", "maximum": 10}, "more than the maximum", id="maximum"),
    pytest.param(None, {"anyOf": [{"type": "string"}, {"type": "null"}]}, None, id="any-of"),
    pytest.param(3, {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "not exactly one", id="one-of"),
    pytest.param({"b": {"v": 1}}, {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}},
                                   "$defs": {"B": {"type": "object", "required": ["v", "w"]}}},
                 "$.b: missing required property 'w'", id="ref"),
    pytest.param({"anything": [1]}, {}, None, id="empty-schema"),
])
def test_validate(value: Any, schema: dict[str, Any], problem: str | None) -> None:
    check_schema(schema)
    problems = validate(value, schema)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(("schema", "reason"), [
    pytest.param({"type": "string", "if": {}}, "unsupported keyword(s) ['if']", id="unknown-keyword"),
    pytest.param({"type": "text"}, "'text' is not a JSON type", id="unknown-type"),
    pytest.param({"$ref": "https://example.com/s.json"}, "only local references", id="remote-ref"),
    pytest.param({"pattern": "("}, "not a regular expression", id="bad-pattern"),
    pytest.param({"minLength": -1}, "non-negative integer", id="negative-count"),
    pytest.param([1], "must be an object or a boolean", id="not-a-schema"),
])
def test_schemas_outside_the_subset_are_refused(schema: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("$", r"\$")):
        check_schema(schema)


# -- asking and answering -------------------------------------------------------------------------
async def test_questions_in_sequence_keys_and_handlers_that_catch_everything(checkpoint_dir: Path) -> None:
    calls: list[str] = []

    async def interview(ctx: NodeContext) -> dict[str, Any]:
        calls.append("start")
        try:
            name = await ctx.request_input("Name?", schema=str)
        except Exception:  # must not swallow the pause
            return {"swallowed": True}
        async with anyio.create_task_group():  # the pause leaves a task group of the handler's
            age = await ctx.request_input("Age?", schema={"type": "integer", "minimum": 0}, key="age")
        return {"name": name, "age": age}

    planner = make(checkpoint_dir, [WorkflowNode(id="ask", kind="ask")], {"ask": interview})
    vibe = Vibe(description="two questions")
    first = await planner.execute_with_resume(vibe)
    assert first.status == "waiting" and [r.id for r in first.pending_requests] == ["ask:1"]
    assert first.node_results["ask"].status == "waiting"
    await planner.arespond(first.plan_id, "ask:1", "Ada")
    second = await planner.execute_with_resume(vibe)
    assert [r.id for r in second.pending_requests] == ["ask:age"]
    with pytest.raises(InvalidAnswerError, match="less than the minimum 0"):
        await planner.arespond(first.plan_id, "ask:age", -1)
    await planner.arespond(first.plan_id, "ask:age", 36)
    third = await planner.execute_with_resume(vibe)
    assert third.status == "completed" and third.outputs == {"ask": {"name": "Ada", "age": 36}}
    assert calls == ["start"] * 3


async def test_one_worker_and_two_waiting_branches_do_not_deadlock(checkpoint_dir: Path) -> None:
    nodes = [WorkflowNode(id="a", kind="approval"), WorkflowNode(id="b", kind="approval"),
             WorkflowNode(id="c", kind="noop"), WorkflowNode(id="d", kind="noop", depends_on=["c"])]
    planner = make(checkpoint_dir, nodes, max_concurrency=1)
    result = await planner.execute_with_resume(Vibe(description="one worker"))
    assert result.status == "waiting"
    assert {r.id for r in result.pending_requests} == {"a:1", "b:1"}
    assert result.node_results["d"].status == "completed"  # the other branch ran to its end
    checkpoint = await planner.persistence_manager.latest(result.plan_id)
    assert checkpoint is not None and checkpoint.reason == "waiting"
    assert [r.id for r in checkpoint.pending_requests] == [r.id for r in result.pending_requests]


async def test_in_process_wake_up_without_a_restart(checkpoint_dir: Path) -> None:
    release = anyio.Event()
    asked = anyio.Event()
    events: list[ProgressEvent] = []

    async def slow(ctx: NodeContext) -> str:
        await release.wait()
        return "slow"

    def on_event(event: ProgressEvent) -> None:
        events.append(event)
        if isinstance(event, NodeWaiting):
            asked.set()

    nodes = [WorkflowNode(id="slow", kind="slow"), WorkflowNode(id="gate", kind="approval"),
             WorkflowNode(id="after", kind="noop", depends_on=["gate"])]
    planner = make(checkpoint_dir, nodes, {"slow": slow}, progress_callback=on_event)
    vibe = Vibe(description="wake in place")
    results = []

    async def run() -> None:
        results.append(await planner.execute_with_resume(vibe))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await asked.wait()
        answered = await planner.arespond(vibe.default_plan_id(), "gate:1", {"approved": True})
        assert answered.status == "answered"
        # Durable when arespond returns: the newest file is the "answered" snapshot.
        on_disk = await WorkflowPersistenceManager(checkpoint_dir).latest(vibe.default_plan_id())
        assert on_disk is not None and on_disk.input_requests[0].status == "answered"
        release.set()
    [result] = results
    assert result.status == "completed" and result.pending_requests == []
    assert result.outputs["after"] is None and result.node_results["gate"].output == {"approved": True}
    kinds = [e.kind for e in events]
    assert kinds.index("waiting") < kinds.index("answered")
    assert kinds.count("answered") == 1
    assert any(isinstance(e, CheckpointWritten) and e.reason == "answered" for e in events)
    assert next(e for e in events if isinstance(e, NodeAnswered)).request_id == "gate:1"


async def test_the_blocking_respond_from_a_worker_thread_wakes_the_live_run(checkpoint_dir: Path) -> None:
    release, asked = anyio.Event(), anyio.Event()

    async def slow(ctx: NodeContext) -> str:
        await release.wait()
        return "slow"

    nodes = [WorkflowNode(id="slow", kind="slow"), WorkflowNode(id="gate", kind="approval")]
    planner = make(checkpoint_dir, nodes, {"slow": slow},
                   progress_callback=lambda e: asked.set() if isinstance(e, NodeWaiting) else None)
    vibe = Vibe(description="thread")
    results = []

    async def run() -> None:
        results.append(await planner.execute_with_resume(vibe))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await asked.wait()
        await anyio.to_thread.run_sync(planner.respond, vibe.default_plan_id(), "gate:1", {"approved": True})
        release.set()
    assert results[0].status == "completed"


async def test_durability_none_waits_but_keeps_nothing_to_answer_later() -> None:
    planner = MetaPlanner(planner=StaticPlanner([WorkflowNode(id="g", kind="approval")]), durability="none")
    result = await planner.execute(Vibe(description="nothing saved"))
    assert result.status == "waiting" and result.checkpoints_written == []
    with pytest.raises(PlanNotWaitingError, match='durability "none"'):
        await planner.arespond(result.plan_id, "g:1", {"approved": True})


# -- deadlines ------------------------------------------------------------------------------------
async def test_an_expired_request_fails_its_node_and_refuses_late_answers(checkpoint_dir: Path) -> None:
    clock = Clock()
    nodes = [WorkflowNode(id="gate", kind="approval", parameters={"expires_after": 3600}),
             WorkflowNode(id="publish", kind="noop", depends_on=["gate"])]
    planner = make(checkpoint_dir, nodes, clock=clock)
    vibe = Vibe(description="a deadline")
    first = await planner.execute_with_resume(vibe)
    [request] = first.pending_requests
    assert request.asked_at == T0 and request.deadline == T0 + timedelta(hours=1)

    clock.now = T0 + timedelta(minutes=30)  # a resume before the deadline keeps it
    again = await planner.execute_with_resume(vibe)
    assert again.status == "waiting" and again.pending_requests[0].deadline == request.deadline

    clock.now = T0 + timedelta(hours=1)
    folder = checkpoint_dir / first.plan_id
    before = files(folder)
    with pytest.raises(RequestExpiredError) as caught:
        await planner.arespond(first.plan_id, "gate:1", {"approved": True})
    assert caught.value.deadline == request.deadline
    assert files(folder) == before

    expired = await planner.execute_with_resume(vibe)
    assert expired.status == "failed" and expired.pending_requests == []
    error = expired.node_results["gate"].error
    assert error is not None and error.type == "RequestExpiredError" and not error.retryable
    assert expired.node_results["publish"].status == "skipped"
    checkpoint = await planner.persistence_manager.latest(first.plan_id)
    assert checkpoint is not None and checkpoint.input_requests[0].status == "expired"


async def test_an_expired_request_takes_its_default(checkpoint_dir: Path) -> None:
    clock = Clock()
    default = {"approved": True, "comment": "nobody objected"}
    nodes = [WorkflowNode(id="gate", kind="approval",
                          parameters={"expires_after": 60, "default": default})]
    planner = make(checkpoint_dir, nodes, clock=clock)
    vibe = Vibe(description="silence is consent")
    assert (await planner.execute_with_resume(vibe)).status == "waiting"
    clock.now = T0 + timedelta(seconds=61)
    result = await planner.execute_with_resume(vibe)
    assert result.status == "completed" and result.outputs == {"gate": default}


# -- planners -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("constraint", "asks"), [
    pytest.param("must be approved by legal", True, id="approved"),
    pytest.param("review before publishing", True, id="review-before"),
    pytest.param("needs sign-off from the CEO", True, id="sign-off"),
    pytest.param("under 800 words", False, id="length"),
    pytest.param("mention our review site", False, id="review-as-a-noun"),
])
def test_the_offline_planner_asks_for_approval_when_a_constraint_says_so(constraint: str, asks: bool) -> None:
    assert asks_for_review(constraint) is asks
    plan = anyio.run(OfflinePlanner().plan, Vibe(description="a post", constraints=[constraint]))
    kinds = {node.id: node.kind for node in plan.nodes}
    assert (kinds.get("approval") == "approval") is asks
    assert ("approval" in plan.node("final").depends_on) is asks


def test_the_llm_planner_is_told_when_to_use_the_approval_kind() -> None:
    config = LLMConfig(base_url="http://127.0.0.1:9/v1", api_key="sk-test", model="m")
    with_kind = LLMPlanner(config, kinds=["llm", "approval"])._system_prompt()
    assert '"approval" steps wait for a person' in with_kind and "review before publishing" in with_kind
    assert "approval" not in LLMPlanner(config, kinds=["llm"])._system_prompt()
    assert "approval" in MetaPlanner(llm=config).planner.kinds  # type: ignore[attr-defined]


async def test_a_live_run_wakes_a_node_whose_request_expires(checkpoint_dir: Path) -> None:
    release, gate_done = anyio.Event(), anyio.Event()

    async def slow(ctx: NodeContext) -> str:
        await release.wait()  # busy until the expired gate has completed
        return "slow"

    def on_event(event: ProgressEvent) -> None:
        if getattr(event, "node_id", None) == "gate" and event.kind == "node_completed":
            gate_done.set()

    nodes = [WorkflowNode(id="slow", kind="slow"),
             WorkflowNode(id="gate", kind="approval", parameters={"expires_after": 0, "default": {
                 "approved": True, "comment": "no answer needed"}})]
    planner = make(checkpoint_dir, nodes, {"slow": slow}, progress_callback=on_event, clock=Clock())
    results = []

    async def run() -> None:
        results.append(await planner.execute_with_resume(Vibe(description="expires while live")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await gate_done.wait()
        release.set()
    [result] = results
    assert result.status == "completed"
    assert result.outputs["gate"] == {"approved": True, "comment": "no answer needed"}


async def test_a_manual_checkpoint_of_a_waiting_run_keeps_it_answerable(checkpoint_dir: Path) -> None:
    planner = make(checkpoint_dir, [WorkflowNode(id="gate", kind="approval")])
    vibe = Vibe(description="manual checkpoint while waiting")
    waiting = await planner.execute_with_resume(vibe)
    await planner.create_checkpoint(waiting.plan_id, waiting)
    with pytest.raises(InvalidAnswerError, match="at most 1000000 are taken"):
        await planner.arespond(waiting.plan_id, "gate:1", {"approved": True, "comment": "x" * 1_000_000})
    await planner.arespond(waiting.plan_id, "gate:1", {"approved": True})
    assert (await planner.execute_with_resume(vibe)).status == "completed"


async def test_answers_are_recorded_in_any_store(checkpoint_dir: Path) -> None:
    store = MemoryCheckpointStore()
    nodes = [WorkflowNode(id="gate", kind="approval"),
             WorkflowNode(id="after", kind="noop", depends_on=["gate"])]

    def planner() -> MetaPlanner:  # a new one each time: nothing carried over in memory
        return MetaPlanner(planner=StaticPlanner(nodes),
                           persistence_manager=WorkflowPersistenceManager(store=store))

    vibe = Vibe(description="memory store")
    waiting = await planner().execute_with_resume(vibe)
    assert waiting.status == "waiting"
    await planner().arespond(waiting.plan_id, "gate:1", {"approved": True})
    latest = await WorkflowPersistenceManager(store=store).latest(waiting.plan_id)
    assert latest is not None and latest.reason == "answered" and latest.pending_requests == []
    done = await planner().execute_with_resume(vibe)
    assert done.status == "completed" and done.nodes_restored == 0 and done.nodes_run == 2


async def test_the_blocking_respond_refuses_to_hang_the_event_loop() -> None:
    planner = MetaPlanner(durability="none")
    with pytest.raises(RuntimeError, match=r"await planner\.arespond"):
        planner.respond("a-plan", "gate:1", {"approved": True})


async def test_every_checkpoint_of_a_chain_carries_the_requests(checkpoint_dir: Path) -> None:
    asks = [True]

    async def maybe_ask(ctx: NodeContext) -> str:
        if asks[0]:
            await ctx.request_input("Anything to add?")
        return "done"

    nodes = [WorkflowNode(id="x", kind="maybe"), WorkflowNode(id="gate", kind="approval"),
             WorkflowNode(id="c", kind="noop"), WorkflowNode(id="d", kind="noop", depends_on=["c"])]
    planner = make(checkpoint_dir, nodes, {"maybe": maybe_ask})
    vibe = Vibe(description="requests in deltas")
    first = await planner.execute_with_resume(vibe)
    assert first.status == "waiting" and {r.id for r in first.pending_requests} == {"x:1", "gate:1"}
    manager = planner.persistence_manager
    latest = await manager.latest(first.plan_id)
    assert latest is not None and latest.kind == "delta" and latest.reason == "waiting"
    assert {r.id for r in latest.pending_requests} == {"x:1", "gate:1"}
    infos = sorted(await manager.list_checkpoints(first.plan_id), key=lambda info: info.sequence)
    assert infos[0].reason == "planned" and infos[0].waiting_for == []
    assert infos[-1].checkpoint_id == latest.checkpoint_id
    assert sorted(infos[-1].waiting_for) == ["gate:1", "x:1"]
    by_id = await manager.get_checkpoint(latest.checkpoint_id)
    assert by_id.input_requests == latest.input_requests

    # A resume from the delta restores the requests: asked again, each keeps when it was asked.
    asks[0] = False  # x now ends without its answer: its request is moot, not waited for
    second = await planner.execute_with_resume(vibe)
    assert second.status == "waiting" and [r.id for r in second.pending_requests] == ["gate:1"]
    assert second.pending_requests[0] == next(r for r in first.pending_requests if r.id == "gate:1")
    tip = await manager.latest(first.plan_id)
    assert tip is not None and tip.kind == "delta" and tip.run_id != latest.run_id
    assert {r.id for r in tip.pending_requests} == {"x:1", "gate:1"}  # recorded, as asked
    assert newest_info(await manager.list_checkpoints(first.plan_id)).waiting_for == ["gate:1"]

    # The answer is read from the delta's chain and written as a base of the answer's own.
    await planner.arespond(first.plan_id, "gate:1", {"approved": True})
    answered = await manager.latest(first.plan_id)
    assert answered is not None and answered.kind == "base" and answered.reason == "answered"
    assert {r.id: r.status for r in answered.input_requests} == {"x:1": "pending", "gate:1": "answered"}
    assert newest_info(await manager.list_checkpoints(first.plan_id)).waiting_for == []
    done = await planner.execute_with_resume(vibe)
    assert done.status == "completed" and done.pending_requests == [] and done.nodes_run == 1


def newest_info(infos: list[CheckpointInfo]) -> CheckpointInfo:
    return max(infos, key=lambda info: info.sequence)


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("waiting_for", "gate:1", "'waiting_for'"),
    ("input_requests", [{"id": "gate:1"}], "input_requests.0.node_id"),
])
async def test_a_delta_with_malformed_requests_is_corrupt(checkpoint_dir: Path, field: str, value: Any,
                                                          problem: str) -> None:
    nodes = [WorkflowNode(id="gate", kind="approval"), WorkflowNode(id="c", kind="noop")]
    planner = make(checkpoint_dir, nodes)
    waiting = await planner.execute_with_resume(Vibe(description="damaged requests"))
    manager = planner.persistence_manager
    tip = newest_info(await manager.list_checkpoints(waiting.plan_id))
    path = Path(tip.path)
    document = orjson.loads(path.read_bytes())
    assert document["kind"] == "delta" and document["waiting_for"] == ["gate:1"]
    document.pop("checksum")
    document[field] = value
    path.write_bytes(encode_checkpoint(document))  # its own checksum is right
    if field == "waiting_for":  # what a listing reads
        with pytest.raises(CheckpointCorruptError, match=re.escape(problem)) as info:
            peek_summary(path.read_bytes(), path)
        listed = newest_info(await manager.list_checkpoints(waiting.plan_id))
        assert listed.error is not None and problem in listed.error
    else:
        with pytest.raises(CheckpointCorruptError, match=re.escape(problem)) as info:
            await manager.get_checkpoint(tip.checkpoint_id)
    assert info.value.path == path
