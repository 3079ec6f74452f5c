"""``python -m bench.scale``: workers on PostgreSQL, measured on this machine.

- throughput: plans/s with 1, 2 and 4 worker processes (4 plans at once each), plans of a
  10-node chain whose nodes do nothing or sleep 10 ms;
- takeover: seconds from SIGKILL of the worker running a plan to another worker holding its
  lease (and from SIGTERM, which hands the plan over at once);
- overhead: per-node cost of recording a run in PostgreSQL vs in files (both durable: the
  server runs with fsync and synchronous commit on), against a run that records nothing.

It starts its own PostgreSQL (tests/pg.py, ``durable=True``) and writes
bench/results/scale.json; the numbers go into docs/benchmarks.md by hand, with the load.
``--quick`` checks the harness in well under a minute (numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psycopg

from tests import pg
from vibe_planner import (
    FileCheckpointStore,
    MetaPlanner,
    PostgresCheckpointStore,
    WorkflowPersistenceManager,
)

from .worker import ChainPlanner

ROOT = Path(__file__).resolve().parents[2]


class Fleet:
    """Benchmark worker processes on a fresh schema of the server."""

    def __init__(self, server: pg.PostgresServer, **options: Any) -> None:
        self.server = server
        self.schema = pg.fresh_schema()
        self.store = PostgresCheckpointStore(server.url, schema=self.schema)
        anyio.run(self.store.plan_ids)  # creates the tables
        self.options = options
        self.workers: list[subprocess.Popen[str]] = []

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            return conn.execute(query.replace("{s}", self.schema), params or None).fetchall()

    def start(self) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "bench.scale.worker", self.schema]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "VIBE_PLANNER_STORE": self.server.url})
        assert process.stderr is not None
        while "ready" not in process.stderr.readline():
            if process.poll() is not None:
                raise RuntimeError(f"a benchmark worker exited with {process.returncode}")
        self.workers.append(process)
        return process

    def submit(self, count: int, tag: str) -> None:
        planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(store=self.store))

        async def submit_all() -> None:
            for i in range(count):
                await planner.submit(f"bench {tag} plan {i}")

        anyio.run(submit_all)

    def wait(self, query: str, until: Any, *params: Any) -> None:
        deadline = time.monotonic() + 600
        while self.sql(query, *params)[0][0] != until:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up waiting for {query!r} to give {until!r}")
            time.sleep(0.005)

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            process.wait(timeout=120)
        self.store.close()


def throughput(server: pg.PostgresServer, workers: int, node_ms: float, plans: int) -> dict[str, Any]:
    fleet = Fleet(server, nodes=10, node_ms=node_ms, concurrency=4, poll_interval=1.0)
    try:
        for _ in range(workers):
            fleet.start()
        started = time.perf_counter()
        fleet.submit(plans, f"w{workers}-ms{node_ms}")
        fleet.wait("SELECT count(*) FROM {s}.vp_queue WHERE state = 'completed'", plans)
        elapsed = time.perf_counter() - started
    finally:
        fleet.stop()
    return {"workers": workers, "node_ms": node_ms, "plans": plans, "nodes": 10, "seconds": elapsed,
            "plans_per_s": plans / elapsed}


def repeated(server: pg.PostgresServer, workers: int, node_ms: float, plans: int,
             reps: int) -> dict[str, Any]:
    """`throughput` *reps* times: the median run, with the others' plans/s."""
    runs = sorted((throughput(server, workers, node_ms, plans) for _ in range(reps)),
                  key=lambda run: run["plans_per_s"])
    return {**runs[len(runs) // 2], "all_plans_per_s": [run["plans_per_s"] for run in runs]}


def takeover(server: pg.PostgresServer, reps: int, how: signal.Signals, ttl: float,
             poll: float) -> dict[str, Any]:
    # One long plan (600 nodes of 100 ms): it outlasts every takeover.
    fleet = Fleet(server, nodes=600, node_ms=100, concurrency=1, lease_ttl=ttl, poll_interval=poll)
    latencies: list[float] = []
    token = 0
    try:
        fleet.start()
        fleet.start()
        fleet.submit(1, f"takeover-{how.name}")
        for _ in range(reps):
            fleet.wait("SELECT count(*) FROM {s}.vp_leases WHERE token > %s", 1, token)  # running
            ((token, holder),) = fleet.sql("SELECT token, holder FROM {s}.vp_leases")
            pid = int(holder.split()[0].removeprefix("pid="))
            victim = next(p for p in fleet.workers if p.pid == pid)
            killed = time.perf_counter()
            victim.send_signal(how)
            fleet.wait("SELECT count(*) FROM {s}.vp_leases WHERE token > %s", 1, token)
            latencies.append(time.perf_counter() - killed)
            victim.wait()
            fleet.workers.remove(victim)
            fleet.start()
    finally:
        fleet.stop()
    return {"signal": how.name, "lease_ttl": ttl, "poll_interval": poll, "reps": reps,
            "median_s": statistics.median(latencies), "max_s": max(latencies), "all_s": latencies}


def overhead(server: pg.PostgresServer, nodes: int, reps: int) -> dict[str, Any]:
    async def noop(ctx: Any) -> str:
        return "x"

    def timed(manager: WorkflowPersistenceManager | None, tag: str) -> float:
        options: dict[str, Any] = {"durability": "none"} if manager is None \
            else {"persistence_manager": manager}
        planner = MetaPlanner(planner=ChainPlanner(nodes), handlers={"work": noop}, checkpoint_interval=5,
                              **options)
        times = []
        for rep in range(reps):
            started = time.perf_counter()
            result = anyio.run(planner.execute, f"overhead {tag} {rep}")
            times.append(time.perf_counter() - started)
            assert result.status == "completed"
        return statistics.median(times)

    store = PostgresCheckpointStore(server.url, schema=pg.fresh_schema())
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        base = timed(None, "none")
        files = timed(WorkflowPersistenceManager(store=FileCheckpointStore(Path(folder) / "cp")), "files")
        postgres = timed(WorkflowPersistenceManager(store=store), "postgres")
    store.close()
    per_node = {name: (value - base) / nodes * 1e6
                for name, value in (("files", files), ("postgres", postgres))}
    return {"nodes": nodes, "reps": reps, "seconds": {"none": base, "files": files, "postgres": postgres},
            "per_node_us": per_node, "postgres_over_files": per_node["postgres"] / per_node["files"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path,
                        help="results file (default bench/results/scale.json; none with --quick)")
    args = parser.parse_args()
    plans, reps, nodes = (8, 2, 40) if args.quick else (60, 7, 200)
    server = pg.start(durable=True)
    results: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                               f"{platform.python_implementation()} {platform.python_version()}",
                               "load_before": os.getloadavg()}
    try:
        results["throughput"] = [repeated(server, w, ms, plans, 1 if args.quick else 3)
                                 for ms in (0.0, 10.0) for w in (1, 2, 4)]
        results["takeover"] = [takeover(server, reps, signal.SIGKILL, 2.0, 0.5),
                               takeover(server, max(2, reps // 2), signal.SIGTERM, 2.0, 0.5)]
        results["overhead"] = overhead(server, nodes, 3)
    finally:
        server.stop()
    results["load_after"] = os.getloadavg()
    out = args.out or (None if args.quick else ROOT / "bench" / "results" / "scale.json")
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
