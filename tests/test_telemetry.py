"""OpenTelemetry spans and metrics, read back from the SDK's in-memory exporter and reader."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.fake_openai import FakeOpenAIServer, Reply, text_contains
from vibe_planner import LLMConfig, MetaPlanner, WorkflowPersistenceManager, _telemetry

pytestmark = pytest.mark.anyio
SECRET = "sk-telemetry-SECRET-0123456789"
is_planner = text_contains("You are a planner", roles=["system"])
PLAN = json.dumps({"steps": [
    {"step": 1, "title": "Outline", "instructions": "Outline it.", "after": []},
    {"step": 2, "title": "Draft", "instructions": "Draft it.", "after": [1]},
    {"step": 3, "title": "Title", "instructions": "Name it.", "after": [1]},
    {"step": 4, "title": "Final", "instructions": "Join them.", "after": [2, 3]},
]})
_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def providers() -> None:
    # Global providers can be set once per process (docs/tracing.md may have set the tracer
    # provider already: then the exporter joins it); every test of this module shares them.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _EXPORTER.clear()
    return _EXPORTER


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def planner_for(server: FakeOpenAIServer, tmp_path: Path) -> MetaPlanner:
    llm = LLMConfig(model="qwen-test", base_url=server.base_url, api_key=SECRET, max_tokens=512,
                    temperature=0.0, retry_initial_delay=0.01)
    return MetaPlanner(llm=llm, persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"),
                       checkpoint_interval=2)


def metric_totals() -> dict[str, float]:
    """Cumulative totals: ``name`` (sum), ``name#count`` (histograms), ``name[type]`` (tokens)."""
    data = _READER.get_metrics_data()
    totals: dict[str, float] = {}
    if data is None:
        return totals
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    name = metric.name
                    if "gen_ai.token.type" in point.attributes:
                        name += f"[{point.attributes['gen_ai.token.type']}]"
                    value = getattr(point, "value", None)
                    totals[name] = totals.get(name, 0) + (point.sum if value is None else value)
                    if value is None:
                        totals[name + "#count"] = totals.get(name + "#count", 0) + point.count
    return totals


def metric_delta(before: dict[str, float]) -> dict[str, float]:
    after = metric_totals()
    return {name: value - before.get(name, 0) for name, value in after.items()}


def parent_of(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> ReadableSpan | None:
    return by_id.get(span.parent.span_id) if span.parent is not None else None


async def test_a_run_is_one_trace_of_plan_nodes_chats_and_checkpoints(
    server: FakeOpenAIServer, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    server.on(is_planner, Reply(content=PLAN, usage={"prompt_tokens": 300, "completion_tokens": 90,
                                                     "total_tokens": 390}))
    server.set_default(Reply(content="text", usage={"prompt_tokens": 20, "completion_tokens": 5,
                                                    "total_tokens": 25}))
    before = metric_totals()  # the metrics are cumulative: compare before and after
    result = await planner_for(server, tmp_path).execute("a post")
    assert result.status == "completed"
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    names = sorted(s.name for s in finished)
    assert names.count("invoke_workflow") == 1 and names.count("plan") == 1
    assert names.count("chat qwen-test") == 5
    assert {n for n in names if n.startswith("node ")} == {"node outline", "node draft", "node title",
                                                           "node final"}
    root = next(s for s in finished if s.name == "invoke_workflow")
    assert root.parent is None and len({s.context.trace_id for s in finished}) == 1
    assert root.attributes is not None
    assert root.attributes["vibe_planner.run.status"] == "completed"
    assert root.attributes["vibe_planner.nodes.run"] == 4
    assert root.attributes["vibe_planner.run.id"] == result.run_id
    plan = next(s for s in finished if s.name == "plan")
    assert parent_of(plan, by_id) is root
    assert plan.attributes is not None and plan.attributes["vibe_planner.plan.repairs"] == 0
    for span in finished:
        if span.name.startswith("node "):
            assert parent_of(span, by_id) is root
            assert span.attributes is not None and span.attributes["vibe_planner.node.status"] == "completed"
        if span.name.startswith("chat "):
            parent = parent_of(span, by_id)
            assert parent is not None and (parent is plan or parent.name.startswith("node "))
            attrs = span.attributes
            assert attrs is not None
            assert span.kind == trace.SpanKind.CLIENT
            assert attrs["gen_ai.operation.name"] == "chat"
            assert attrs["gen_ai.request.model"] == "qwen-test"
            assert attrs["gen_ai.request.max_tokens"] == 512
            assert attrs["server.address"] == "127.0.0.1"
            expected = (300, 90) if parent is plan else (20, 5)
            assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == expected
            assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    writes = [s for s in finished if s.name == "checkpoint write"]
    snapshots = [s for s in writes if s.attributes and "vibe_planner.checkpoint.id" in s.attributes]
    assert {s.attributes["vibe_planner.checkpoint.id"] for s in snapshots if s.attributes} == set(
        result.checkpoints_written)
    for span in snapshots:
        assert span.attributes is not None and span.attributes["vibe_planner.checkpoint.bytes"] > 100
        assert span.attributes["vibe_planner.checkpoint.write_seconds"] >= 0
        assert parent_of(span, by_id) is root
    for span in finished:  # nothing secret, no prompt, no reply
        assert SECRET not in repr(dict(span.attributes or {}))
        assert "Outline it." not in repr(dict(span.attributes or {}))

    delta = metric_delta(before)
    assert delta["vibe_planner.nodes.completed"] == 4
    assert delta["vibe_planner.checkpoint.size#count"] == len(result.checkpoints_written)
    assert delta["vibe_planner.checkpoint.size"] == sum(
        s.attributes["vibe_planner.checkpoint.bytes"] for s in snapshots if s.attributes)
    assert delta["vibe_planner.checkpoint.write.duration#count"] == len(writes)
    assert delta["gen_ai.client.token.usage[input]"] == 300 + 4 * 20
    assert delta["gen_ai.client.token.usage[output]"] == 90 + 4 * 5
    assert delta["gen_ai.client.operation.duration#count"] == 5


async def test_failed_nodes_and_requests_are_error_spans_without_the_key(
    server: FakeOpenAIServer, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    server.on(is_planner, PLAN)
    server.set_default(Reply.error(401, f"Incorrect API key provided: {SECRET}"))
    before = metric_totals()
    result = await planner_for(server, tmp_path).execute("a failing post")
    assert result.status == "failed"
    finished = spans.get_finished_spans()
    outline = next(s for s in finished if s.name == "node outline")
    assert outline.status.status_code == trace.StatusCode.ERROR
    assert outline.attributes is not None and outline.attributes["vibe_planner.node.status"] == "failed"
    chat = [s for s in finished if s.name.startswith("chat ") and s.attributes
            and s.attributes.get("error.type") == "401"]
    assert chat and all(s.status.status_code == trace.StatusCode.ERROR for s in chat)
    root = next(s for s in finished if s.name == "invoke_workflow")
    assert root.status.status_code == trace.StatusCode.ERROR
    for span in finished:
        assert SECRET not in repr(dict(span.attributes or {})) + str(span.status.description)
        assert all(SECRET not in repr(dict(e.attributes or {})) for e in span.events)
    assert metric_delta(before)["vibe_planner.nodes.failed"] == 1


def test_the_package_works_without_opentelemetry(tmp_path: Path) -> None:
    assert _telemetry.ENABLED
    script = textwrap.dedent(f"""
        import sys
        sys.modules["opentelemetry"] = None  # import opentelemetry -> ImportError
        import anyio
        from vibe_planner import MetaPlanner, WorkflowPersistenceManager, _telemetry
        planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager({str(tmp_path)!r}))
        result = anyio.run(planner.execute, "offline, untraced")
        print(_telemetry.ENABLED, result.status, len(result.checkpoints_written) > 0,
              any(name.startswith("opentelemetry") for name in sys.modules if sys.modules[name]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "completed", "True", "False"]
