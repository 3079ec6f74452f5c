"""LangGraph: one `StateGraph` node per DAG node, one edge per dependency.

A node with one dependency gets ``add_edge(dep, node)``; with several, the join edge
``add_edge([deps...], node)`` (it runs once all of them have run); a node without
dependencies hangs off ``START``. Outputs go into one state key, a dict merged with
``operator.or_`` (the idiomatic reducer), so dependents and checkpoints see them.

Variants: ``none`` (no checkpointer), ``memory`` (`InMemorySaver`) and ``sqlite``
(`AsyncSqliteSaver` on a file). LangGraph checkpoints after every superstep and saves each
task's writes as the task finishes; it has no "every N nodes" setting. ``durability`` is left at
its default (``"async"``). ``max_concurrency`` is set to the workload's limit.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from ..measure import NodeBody, OnLoopTimer
from ..workloads import Workload
from .base import RunEnv

__all__ = ["open_runner"]

THREAD = "bench"


class State(TypedDict):
    """The graph state: every finished node's output, by node id."""

    out: Annotated[dict[str, Any], operator.or_]


def _node(node_id: str, body: NodeBody) -> Callable[[State], Awaitable[dict[str, Any]]]:
    async def run(state: State) -> dict[str, Any]:
        return {"out": {node_id: await body(node_id)}}

    run.__name__ = node_id
    return run


def build_graph(workload: Workload, body: NodeBody) -> Any:
    """Return the (uncompiled) `StateGraph` of *workload*."""
    graph: Any = StateGraph(State)
    has_dependents = {dep for node in workload.nodes for dep in node.deps}
    for node in workload.nodes:
        graph.add_node(node.id, _node(node.id, body))
    for node in workload.nodes:
        if not node.deps:
            graph.add_edge(START, node.id)
        elif len(node.deps) == 1:
            graph.add_edge(node.deps[0], node.id)
        else:
            graph.add_edge(list(node.deps), node.id)
        if node.id not in has_dependents:
            graph.add_edge(node.id, END)
    return graph


class _TimedSerde:
    """Delegates to a serializer, timing ``dumps_typed`` calls made on the event loop."""

    def __init__(self, inner: Any, timer: OnLoopTimer) -> None:
        self._inner = inner
        self.dumps_typed = timer.wrap(inner.dumps_typed, measure_bytes=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Runner:
    def __init__(self, workload: Workload, variant: str, env: RunEnv, saver: Any) -> None:
        self._workload, self._variant, self._env = workload, variant, env
        self._saver = saver
        self.timer = OnLoopTimer()
        if saver is not None:
            saver.serde = _TimedSerde(saver.serde, self.timer)
        self.graph: Any = build_graph(workload, env.body).compile(checkpointer=saver)
        self.config: dict[str, Any] = {
            "configurable": {"thread_id": THREAD},
            "recursion_limit": 10 * workload.size + 100,
            "max_concurrency": workload.concurrency,
        }
        self._db = env.workdir / "langgraph.sqlite"

    async def run(self) -> dict[str, Any]:
        start: dict[str, Any] | None = None if self._env.resume else {"out": {}}
        final = await self.graph.ainvoke(start, self.config)
        completed = len(final.get("out", {})) if isinstance(final, dict) else 0
        status = "completed" if completed == self._workload.size else "incomplete"
        return {"status": status, "completed": completed, "checkpoints": self._count()}

    async def recorded(self) -> set[str]:
        if self._saver is None:
            return set()
        found = await self._saver.aget_tuple({"configurable": {"thread_id": THREAD}})
        if found is None:
            return set()
        done = set(found.checkpoint["channel_values"].get("out", {}))
        for _task, channel, value in found.pending_writes or []:
            if channel == "out" and isinstance(value, dict):
                done |= set(value)
        return done

    def _count(self) -> int | None:
        if self._variant == "sqlite":
            with contextlib.closing(sqlite3.connect(self._db)) as db:
                return int(db.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
        if self._variant == "memory":
            return sum(len(cps) for ns in self._saver.storage.values() for cps in ns.values())
        return None

    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = self.timer.results("on_loop_serialize") if self._saver else {}
        if self._variant == "sqlite":
            with contextlib.closing(sqlite3.connect(self._db)) as db:
                largest, total = db.execute(
                    "SELECT max(length(checkpoint)), sum(length(checkpoint)) FROM checkpoints"
                ).fetchone()
                writes = db.execute("SELECT sum(length(value)) FROM writes").fetchone()[0]
            files = [p for p in self._env.workdir.glob("langgraph.sqlite*") if p.is_file()]
            figures |= {"cp_files": len(files), "cp_bytes": sum(p.stat().st_size for p in files),
                        "cp_largest": largest or 0, "cp_stored_bytes": (total or 0) + (writes or 0)}
        elif self._variant == "memory":
            # Nothing reaches a disk; what it keeps are the serialised blobs timed above.
            figures |= {"cp_files": 0, "cp_bytes": 0, "cp_largest": self.timer.largest,
                        "cp_stored_bytes": self.timer.bytes}
        return figures


@contextlib.asynccontextmanager
async def open_runner(workload: Workload, variant: str, env: RunEnv) -> AsyncIterator[_Runner]:
    """Yield a runner of *workload* as a compiled LangGraph graph with checkpointer *variant*."""
    if variant == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(str(env.workdir / "langgraph.sqlite")) as saver:
            yield _Runner(workload, variant, env, saver)
    elif variant == "memory":
        yield _Runner(workload, variant, env, InMemorySaver())
    elif variant == "none":
        yield _Runner(workload, variant, env, None)
    else:
        raise ValueError(f"unknown LangGraph variant {variant!r}")
