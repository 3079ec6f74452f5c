"""OpenTelemetry traces and metrics, following the GenAI semantic conventions.

With ``opentelemetry-api`` installed (the ``[otel]`` extra), every run is traced:

- ``invoke_workflow`` (one per `MetaPlanner.execute` / ``execute_with_resume`` / ``resume``),
  with the plan id, run id, status and node counts;
- ``plan`` for planning (planner, model, nodes, repairs, tokens);
- ``node <id>`` per node run (kind, attempts, status; an error status with its message);
- ``chat <model>`` per LLM request (``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``, the server address);
- ``checkpoint write`` per checkpoint batch (reason, snapshot bytes, journal records, latency).

Metrics: ``vibe_planner.nodes.completed`` and ``vibe_planner.nodes.failed`` (counters),
``vibe_planner.checkpoint.size`` (bytes) and ``vibe_planner.checkpoint.write.duration``
(seconds), ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration``.

Nothing is exported unless the app installs an SDK and sets a tracer/meter provider; the API
alone records nothing. Without the API the module is imported once, finds nothing, and every
hook returns a shared no-op at the cost of one attribute test. Nothing secret is recorded: no
prompt, no reply, no key; error messages are the redacted ones the checkpoints hold.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:  # the one guarded import: without the [otel] extra every hook below is a no-op
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised by a subprocess test
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._models import ExecutionResult, WorkflowNode, WorkflowPlan
    from .llm._config import LLMConfig
    from .llm._session import ChatReply

__all__ = ["ENABLED"]

ENABLED = _trace is not None
"""Whether ``opentelemetry-api`` is importable (then spans and metrics are recorded)."""
_SCOPE = "vibe_planner"
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()


class _Instruments:
    def __init__(self) -> None:
        meter = _metrics.get_meter(_SCOPE)
        self.completed = meter.create_counter(
            "vibe_planner.nodes.completed", unit="{node}", description="Nodes that completed")
        self.failed = meter.create_counter(
            "vibe_planner.nodes.failed", unit="{node}", description="Nodes that failed for good")
        self.checkpoint_size = meter.create_histogram(
            "vibe_planner.checkpoint.size", unit="By", description="Bytes of a checkpoint snapshot")
        self.checkpoint_latency = meter.create_histogram(
            "vibe_planner.checkpoint.write.duration", unit="s",
            description="Time to make one checkpoint batch durable")
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens per LLM request")
        self.llm_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of LLM requests")


_instruments = _Instruments() if ENABLED else None


def _tracer() -> Tracer:
    return _trace.get_tracer(_SCOPE)


# -- the run and its planning ---------------------------------------------------------------------
def workflow_span(plan_id: str) -> contextlib.AbstractContextManager[Any]:
    """Open the ``invoke_workflow`` span of one call of the `MetaPlanner`."""
    if not ENABLED:
        return _NULL
    return _tracer().start_as_current_span("invoke_workflow", attributes={
        "gen_ai.operation.name": "invoke_workflow", "vibe_planner.plan.id": plan_id})


def run_finished(result: ExecutionResult) -> None:
    """Put a run's outcome on the current ``invoke_workflow`` span."""
    if not ENABLED:
        return
    span = _trace.get_current_span()
    span.set_attributes({
        "vibe_planner.run.id": result.run_id, "vibe_planner.run.status": result.status,
        "vibe_planner.nodes.run": result.nodes_run, "vibe_planner.nodes.restored": result.nodes_restored,
        "vibe_planner.nodes.total": len(result.plan.nodes),
        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
    })
    if result.resumed_from is not None:
        span.set_attribute("vibe_planner.resumed_from", result.resumed_from)
    if result.status != "completed":
        span.set_status(_trace.StatusCode.ERROR, f"run {result.status}")


def plan_span(planner: str) -> contextlib.AbstractContextManager[Any]:
    """Open the ``plan`` span around a planner's ``plan`` call."""
    if not ENABLED:
        return _NULL
    return _tracer().start_as_current_span("plan", attributes={
        "gen_ai.operation.name": "plan", "vibe_planner.planner": planner})


def plan_made(span: Any, plan: WorkflowPlan) -> None:
    """Put what planning produced on its span."""
    if span is None:
        return
    span.set_attribute("vibe_planner.plan.id", plan.plan_id)
    span.set_attribute("vibe_planner.nodes.total", len(plan.nodes))
    if plan.model is not None:
        span.set_attribute("gen_ai.request.model", plan.model)
    if plan.usage is not None:
        span.set_attributes({
            "vibe_planner.plan.repairs": max(0, plan.usage.requests - 1),
            "gen_ai.usage.input_tokens": plan.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": plan.usage.completion_tokens,
        })


# -- nodes ----------------------------------------------------------------------------------------
def node_span(node: WorkflowNode) -> contextlib.AbstractContextManager[Any]:
    """Open the span of one node (all its attempts)."""
    if not ENABLED:
        return _NULL
    return _tracer().start_as_current_span(f"node {node.id}", attributes={
        "vibe_planner.node.id": node.id, "vibe_planner.node.kind": node.kind})


def node_finished(span: Any, record: Any) -> None:
    """Put a node's outcome on its span and count it."""
    if span is None or _instruments is None:
        return
    status = record["status"]
    span.set_attribute("vibe_planner.node.status", str(status))
    span.set_attribute("vibe_planner.node.attempts", record.get("attempts", 0))
    if status == "completed":
        _instruments.completed.add(1)
    else:
        _instruments.failed.add(1)
        error = record.get("error") or {}
        span.set_attribute("error.type", str(error.get("type", "error")))
        span.set_status(_trace.StatusCode.ERROR, str(error.get("message", ""))[:500])


# -- LLM requests ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _chat(config: LLMConfig) -> Iterator[Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": config.model,
    }
    for name, value in (("max_tokens", config.max_tokens), ("temperature", config.temperature),
                        ("top_p", config.top_p), ("seed", config.seed)):
        if value is not None:
            attributes[f"gen_ai.request.{name}"] = value
    if config.base_url:
        parts = urlsplit(config.base_url)
        if parts.hostname:
            attributes["server.address"] = parts.hostname
        if parts.port:
            attributes["server.port"] = parts.port
    started = time.monotonic()
    with _tracer().start_as_current_span(f"chat {config.model}", kind=_trace.SpanKind.CLIENT,
                                         attributes=attributes) as span:
        yield span
    assert _instruments is not None
    _instruments.llm_duration.record(time.monotonic() - started, {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": config.model})


def chat_span(config: LLMConfig) -> contextlib.AbstractContextManager[Any]:
    """Open the ``chat <model>`` span of one LLM request."""
    return _chat(config) if ENABLED else _NULL


def chat_finished(span: Any, config: LLMConfig, reply: ChatReply, response_model: str | None) -> None:
    """Put the usage and finish reason of a reply on its span, and count its tokens."""
    if span is None or _instruments is None:
        return
    usage = reply.usage
    span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                         "gen_ai.usage.output_tokens": usage.completion_tokens})
    if reply.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [reply.finish_reason])
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": config.model}
    _instruments.tokens.record(usage.prompt_tokens, {**base, "gen_ai.token.type": "input"})
    _instruments.tokens.record(usage.completion_tokens, {**base, "gen_ai.token.type": "output"})


def chat_failed(span: Any, error: Exception, status_code: int | None) -> None:
    """Mark a failed LLM request's span (the message is the redacted one)."""
    if span is None:
        return
    span.set_attribute("error.type", str(status_code) if status_code else type(error).__name__)
    span.set_status(_trace.StatusCode.ERROR, str(error)[:500])


# -- checkpoints ----------------------------------------------------------------------------------
def checkpoint_span(reason: str | None, records: int) -> contextlib.AbstractContextManager[Any]:
    """Open the span of one checkpoint batch (journal records and maybe a snapshot)."""
    if not ENABLED:
        return _NULL
    return _tracer().start_as_current_span("checkpoint write", attributes={
        "vibe_planner.checkpoint.reason": reason or "journal", "vibe_planner.journal.records": records})


def checkpoint_written(span: Any, checkpoint_id: str | None, size: int, seconds: float) -> None:
    """Put a written batch's bytes and latency on its span and in the metrics."""
    if span is None or _instruments is None:
        return
    span.set_attributes({"vibe_planner.checkpoint.bytes": size,
                         "vibe_planner.checkpoint.write_seconds": seconds})
    if checkpoint_id is not None:
        span.set_attribute("vibe_planner.checkpoint.id", checkpoint_id)
        _instruments.checkpoint_size.record(size)
    _instruments.checkpoint_latency.record(seconds)
