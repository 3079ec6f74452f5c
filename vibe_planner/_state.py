"""The live state of one run: changed by the scheduler, snapshotted by the recorder.

Node results are kept as JSON-ready *records*: plain dicts whose ``output`` is an
`orjson.Fragment` of the already-encoded output. A record is never mutated once stored (a new
one replaces it), so a snapshot is a shallow copy of the record table taken on the event loop,
and encoding that copy in a worker thread needs no lock and re-encodes no output.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.lowlevel
import orjson
import pydantic

from ._exceptions import NodeOutputError
from ._models import (
    InputRequest,
    NodeResult,
    NodeStatus,
    ResultRecord,
    TokenUsage,
    WorkflowNode,
    WorkflowPlan,
    encode_json_bounded,
)

__all__ = ["Capture", "Record", "RunState", "utcnow"]

Record = dict[str, Any]
_SORTED = orjson.OPT_SORT_KEYS
_NULL = orjson.Fragment(b"null")
_IMMUTABLE = (str, int, bool, type(None))  # round-trip through JSON unchanged (floats may not)
_RESULTS = pydantic.TypeAdapter(dict[str, NodeResult])
_RESULT_SLICE = 100  # result models built per step: well under a millisecond
_NODES = pydantic.TypeAdapter(list[WorkflowNode])  # the schema of `WorkflowPlan.nodes`
_NODE_SLICE = 100  # nodes dumped per call: ~0.1 ms


def utcnow() -> datetime:
    """Return the current time (UTC); records keep datetimes and orjson writes them as RFC 3339."""
    return datetime.now(UTC)


def encode_output(node_id: str, output: Any) -> bytes:
    """Encode a node output canonically, or raise `NodeOutputError` naming the node."""
    try:
        return encode_json_bounded(output)
    except TypeError as exc:
        raise NodeOutputError(node_id, str(exc)) from None


@dataclass(frozen=True, slots=True)
class Capture:
    """A consistent view of a run, taken on the event loop for a snapshot."""

    records: dict[str, Record]
    """Every record (``full``), or those stored since an earlier capture's `mark`."""
    usage: TokenUsage
    metadata: dict[str, Any]
    mark: int = 0
    """Position in the run's change log: a later capture of changes starts from here."""
    full: bool = True
    counts: tuple[int, int] = (0, 0)
    """Completed and failed records, as of the capture."""
    requests: list[InputRequest] = field(default_factory=list)
    """Every input request of the run (immutable models), in the order first asked: a base
    and a delta alike hold them all."""
    waiting_for: list[str] = field(default_factory=list)
    """Ids of the requests pending for nodes not completed, as of the capture."""


class RunState:
    """Results and outputs of one run of one plan."""

    def __init__(
        self, plan: WorkflowPlan, run_id: str, metadata: dict[str, Any] | None = None
    ) -> None:
        self.plan = plan
        self.run_id = run_id
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.records: dict[str, Record] = {}
        self.outputs: dict[str, Any] = {}
        self.usage = plan.usage or TokenUsage()
        # Requests made of a person, by id: models, replaced (never mutated) when answered.
        self.requests: dict[str, InputRequest] = {}
        # The encoded outputs of completed nodes whose output is a container: each dependent
        # decodes its own copy from them (see `inputs_of`).
        self._encoded: dict[str, bytes] = {}
        # Encoded by the writer thread on the first snapshot: never on the event loop.
        self._plan_json: orjson.Fragment | None = None
        self._vibe_json: orjson.Fragment | None = None
        # Node ids in the order their records were stored (a node once per store): what a
        # delta snapshot takes since the previous snapshot, without looking at every record.
        self._log: list[str] = []
        self._completed = 0
        self._failed = 0

    @classmethod
    def restored(
        cls, plan: WorkflowPlan, run_id: str, metadata: dict[str, Any], *, usage: TokenUsage,
        results: Iterable[ResultRecord], journal: Iterable[ResultRecord] = (),
        requests: Iterable[InputRequest] = (),
    ) -> RunState:
        """Return the state of a new run that continues from completed *results*.

        *usage* already counts *results*; records of *journal* (written after them) add theirs.
        """
        state = cls(plan, run_id, metadata)
        state.usage = usage
        for result in results:
            state.restore(result, count_usage=False)
        for record in journal:
            state.restore(record, count_usage=True)
        state.requests = {request.id: request for request in requests}
        return state

    # -- building records -------------------------------------------------------------
    def complete(
        self, node_id: str, output: Any, *, attempts: int, started_at: datetime,
        usage: TokenUsage | None = None,
    ) -> Record:
        """Store a completed node (its output is encoded and re-read as JSON) and return it."""
        encoded = encode_output(node_id, output)
        # Dependents see the output as it will read back from a checkpoint (tuples become
        # lists, ...), so a resumed run computes exactly what a fresh one would.
        if type(output) in _IMMUTABLE:
            self.outputs[node_id] = output
        else:
            self.outputs[node_id] = orjson.loads(encoded)
            self._encoded[node_id] = encoded
        record = _record(node_id, NodeStatus.COMPLETED, orjson.Fragment(encoded), None, attempts,
                         started_at, usage)
        return self._store(record, usage)

    def finish_unsuccessfully(
        self, node_id: str, status: NodeStatus, *, error: dict[str, Any] | None = None,
        attempts: int = 0, started_at: datetime | None = None, usage: TokenUsage | None = None,
    ) -> Record:
        """Store a failed, skipped or cancelled node and return its record."""
        return self._store(_record(node_id, status, _NULL, error, attempts, started_at, usage), usage)

    def restore(self, result: ResultRecord, *, count_usage: bool) -> None:
        """Adopt a completed result read back from a checkpoint or the journal (validated).

        Only completed results are restored: the others run again.

        Usage already included in the checkpoint's total is not counted again (*count_usage*
        is true only for journal records written after that checkpoint).
        """
        node_id, output = result["node_id"], result.get("output")
        error, usage = result.get("error"), result.get("usage")
        self.outputs[node_id] = output
        if type(output) in _IMMUTABLE:
            stored: Any = output  # a scalar encodes the same as its fragment would
        else:
            self._encoded[node_id] = encoded = orjson.dumps(output, option=_SORTED)
            stored = orjson.Fragment(encoded)
        record = {
            "node_id": node_id,
            "status": NodeStatus.COMPLETED.value,
            "output": stored,
            "error": None if error is None else error.model_dump(),
            "attempts": result.get("attempts", 0),
            "started_at": result.get("started_at"),
            "finished_at": result.get("finished_at"),
            "usage": None if usage is None else usage.model_dump(),
        }
        self._store(record, usage if count_usage else None)

    def inputs_of(self, node_ids: Sequence[str]) -> dict[str, Any]:
        """Return the outputs of *node_ids* (completed nodes) as a handler's own copies.

        Scalars are shared (they cannot change); containers are decoded afresh from their
        encoded form, so a handler that mutates its inputs changes no other node's, and a run
        and its resumed twin compute the same thing.
        """
        outputs, encoded = self.outputs, self._encoded
        return {
            node_id: orjson.loads(encoded[node_id]) if node_id in encoded else outputs[node_id]
            for node_id in node_ids
        }

    def _store(self, record: Record, usage: TokenUsage | None) -> Record:
        if usage is not None:
            self.usage = self.usage + usage
        node_id = record["node_id"]
        old = self.records.get(node_id)
        if old is not None:
            self._count(old["status"], -1)
        self._count(record["status"], 1)
        self.records[node_id] = record
        self._log.append(node_id)
        return record

    def _count(self, status: str, step: int) -> None:
        if status == NodeStatus.COMPLETED:
            self._completed += step
        elif status == NodeStatus.FAILED:
            self._failed += step

    def is_completed(self, node_id: str) -> bool:
        """Whether the node has a completed record."""
        record = self.records.get(node_id)
        return record is not None and record["status"] == NodeStatus.COMPLETED

    # -- snapshots ----------------------------------------------------------------------
    def capture(self) -> Capture:
        """Take a consistent view for a snapshot; cheap (a shallow copy), runs on the loop."""
        return Capture(dict(self.records), self.usage, dict(self.metadata), len(self._log), True,
                       (self._completed, self._failed), *self._requests_view())

    def capture_changes(self, mark: int) -> Capture:
        """Take the records stored since the capture whose `Capture.mark` is *mark* (for a delta).

        The input requests are all taken, changed or not (they are few and small).
        """
        records = self.records
        changed = {node_id: records[node_id] for node_id in self._log[mark:]}
        return Capture(changed, self.usage, dict(self.metadata), len(self._log), False,
                       (self._completed, self._failed), *self._requests_view())

    def _requests_view(self) -> tuple[list[InputRequest], list[str]]:
        """Return every request, and the ids of those pending for nodes not completed."""
        if not self.requests:
            return [], []
        requests = list(self.requests.values())
        waiting = [r.id for r in requests if r.status == "pending" and not self.is_completed(r.node_id)]
        return requests, waiting

    def encoded_plan(self) -> tuple[orjson.Fragment, orjson.Fragment]:
        """Return the plan and its vibe as encoded JSON, made once (in the writer thread)."""
        if self._plan_json is None or self._vibe_json is None:
            self._plan_json, self._vibe_json = self._encode_plan()
        return self._plan_json, self._vibe_json

    def _encode_plan(self) -> tuple[orjson.Fragment, orjson.Fragment]:
        """Encode the plan and its vibe for snapshots, once, in the writer thread.

        Equal to encoding ``plan.model_dump(mode="json")``, but dumped `_NODE_SLICE` nodes at
        a time, giving up the GIL between slices: one dump of a large plan holds it for
        milliseconds, and a waiting event loop asks for it only after the switch interval.
        """
        plan = self.plan.model_dump(mode="json", exclude={"nodes"})
        nodes = self.plan.nodes
        slices = []
        for start in range(0, len(nodes), _NODE_SLICE):
            dumped = _NODES.dump_python(nodes[start : start + _NODE_SLICE], mode="json")
            slices.append(orjson.dumps(dumped, option=_SORTED)[1:-1])
            time.sleep(0)  # releases the GIL: a waiting event loop takes it at once
        plan["nodes"] = orjson.Fragment(b"[" + b",".join(slices) + b"]")
        vibe_json = orjson.Fragment(orjson.dumps(plan["vibe"], option=_SORTED))
        return orjson.Fragment(orjson.dumps(plan, option=_SORTED)), vibe_json

    async def node_results(self) -> dict[str, NodeResult]:
        """Return every node's result as models (pending for nodes without a record).

        Built `_RESULT_SLICE` nodes at a time, letting other tasks run in between: a run of
        10,000 nodes would otherwise hold the event loop for tens of milliseconds at its end.
        """
        nodes = self.plan.nodes
        results: dict[str, NodeResult] = {}
        for start in range(0, len(nodes), _RESULT_SLICE):
            if start:
                await anyio.lowlevel.checkpoint()
            results.update(self._results_of(nodes[start : start + _RESULT_SLICE]))
        return results

    def _results_of(self, nodes: list[WorkflowNode]) -> dict[str, NodeResult]:
        outputs = self.outputs
        results: dict[str, Record] = {}
        for node in nodes:
            record = self.records.get(node.id)
            if record is None:
                results[node.id] = {"node_id": node.id, "status": NodeStatus.PENDING}
            else:
                results[node.id] = {**record, "output": outputs.get(node.id)}
        # One validation call for the lot: pydantic builds models faster than `model_construct`
        # does one at a time (it matters at the end of a run of 10,000 nodes).
        return as_results(results)


def _record(
    node_id: str, status: NodeStatus, output: orjson.Fragment, error: dict[str, Any] | None,
    attempts: int, started_at: datetime | None, usage: TokenUsage | None,
) -> Record:
    return {
        "node_id": node_id,
        "status": status.value,
        "output": output,
        "error": error,
        "attempts": attempts,
        "started_at": started_at,
        "finished_at": utcnow(),
        "usage": None if usage is None else usage.model_dump(),
    }


def as_record(result: NodeResult) -> ResultRecord:
    """Return a result model as the record `RunState.restore` takes."""
    return ResultRecord(
        node_id=result.node_id, status=result.status, output=result.output, error=result.error,
        attempts=result.attempts, started_at=result.started_at, finished_at=result.finished_at,
        usage=result.usage,
    )


def as_results(records: Mapping[str, Any]) -> dict[str, NodeResult]:
    """Return result models for records (dicts or `ResultRecord`s), validated in one call."""
    return _RESULTS.validate_python(records)
