"""``python -m bench.serve_load``: the service under load, over real HTTP.

N plans are submitted at once to a ``vibe-planner serve`` on loopback while N Server-Sent
Events clients watch them (each client connects right after its plan's 202, and gets what it
missed by replay). Checked: every client gets every event of its plan, numbered 1..n without
a gap, in order, ending with ``plan_ended``; a full replay afterwards is identical. Measured:
submit latency (POST to 202), delivery lag of live events (the server's ``at`` stamp to the
client's receipt, same clock), and the server's resident memory after each round, once its
plans have finished (it should stop growing: finished plans' logs are bounded by
``--keep-finished``).

    python -m bench.serve_load                 # 200 plans x 4 rounds (about a minute or two)
    python -m bench.serve_load --plans 5 --rounds 2 --out /tmp/quick.json   # harness check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "vibe-planner"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=int, default=200, help="plans per round (and SSE clients)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (the first one warms up)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per offline node")
    parser.add_argument("--max-running", type=int, help="the server's --max-running (default: --plans)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    return parser.parse_args(argv)


class Server:
    """``vibe-planner serve --no-auth`` in a temporary folder."""

    def __init__(self, folder: Path, plans: int, delay: float, max_running: int) -> None:
        env = {**os.environ, "VIBE_PLANNER_OFFLINE_DELAY": str(delay)}
        self.process = subprocess.Popen(
            [str(SCRIPT), "serve", "--no-auth", "--port", "0", "--max-running", str(max_running),
             "--keep-finished", str(plans)],  # each round's logs stay replayable, no more
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = ""
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if "HTTP/1.1" not in line:  # the access log is not kept
                    self.lines.append(line)
                found = re.search(r"serving on (http://\S+)", line)
                if found:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        ready.wait(120)
        if not self.url:
            raise RuntimeError("the server did not start")

    def rss_mib(self) -> float:
        """The server's resident memory, MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.process.terminate()
        self.process.wait(120)
        self._reader.join(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def watch_one(client: httpx.AsyncClient, vibe: str, out: dict[str, Any]) -> None:
    """Submit one plan, then follow its events to the end."""
    started = time.perf_counter()
    answer = await client.post("/v1/plans", json={"vibe": vibe})
    out["submit_s"] = time.perf_counter() - started
    answer.raise_for_status()
    plan_id = answer.json()["plan_id"]
    out["plan_id"] = plan_id
    connected = time.time()
    events, lags = [], []
    async with client.stream("GET", f"/v1/plans/{plan_id}/events") as response:
        data = None
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif not line and data is not None:
                received = time.time()
                if data["at"] > connected:
                    lags.append(received - data["at"])
                events.append(data)
                data = None
    out["events"], out["lags"] = events, lags


def check(plans: list[dict[str, Any]], replays: dict[str, list[dict[str, Any]]]) -> int:
    """Every event of every plan, in order, none lost; return the number of events delivered."""
    delivered = 0
    for plan in plans:
        events = plan["events"]
        numbers = [int(e["id"].rsplit("-", 1)[1]) for e in events]
        problems = [
            (numbers != list(range(1, len(events) + 1)), "a gap or a disorder in the event ids"),
            (events[-1]["kind"] != "plan_ended" or events[-1]["status"] != "completed", "no completed end"),
            (sum(e["kind"] == "node_completed" for e in events) != events[0]["total"], "node events missing"),
            (replays[plan["plan_id"]] != events, "the replay differs from what the client got live"),
        ]
        for failed, problem in problems:
            if failed:
                raise RuntimeError(f"plan {plan['plan_id']}: {problem}")
        delivered += len(events)
    return delivered


async def replay(client: httpx.AsyncClient, plan_id: str, into: dict[str, list[dict[str, Any]]]) -> None:
    """Read a plan's whole log again."""
    async with client.stream("GET", f"/v1/plans/{plan_id}/events") as response:
        into[plan_id] = [json.loads(line[6:]) async for line in response.aiter_lines()
                         if line.startswith("data: ")]


async def one_round(url: str, index: int, count: int) -> dict[str, Any]:
    """Run *count* plans with *count* watchers; check and summarise."""
    plans: list[dict[str, Any]] = [{} for _ in range(count)]
    # No connection reuse: each request is a client of its own (and none meets a keep-alive timeout).
    limits = httpx.Limits(max_connections=2 * count + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, plan in enumerate(plans):
                tg.start_soon(watch_one, client, f"load round {index} plan {i}", plan)
        wall = time.perf_counter() - began
        replays: dict[str, list[dict[str, Any]]] = {}
        async with anyio.create_task_group() as tg:
            for plan in plans:
                tg.start_soon(replay, client, plan["plan_id"], replays)
    delivered = check(plans, replays)
    submits = sorted(p["submit_s"] * 1000 for p in plans)
    lags = sorted(lag * 1000 for p in plans for lag in p["lags"])
    return {"round": index, "plans": count, "wall_s": round(wall, 2), "events": delivered,
            "live_events": len(lags), "submit_ms": _percentiles(submits), "lag_ms": _percentiles(lags)}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": round(cuts[49], 1), "p99": round(cuts[98], 1), "max": round(max(values), 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write the JSON results and print a Markdown table."""
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="vp-serve-load-") as folder:
        server = Server(Path(folder), args.plans, args.delay, args.max_running or args.plans)
        try:
            memory = [round(server.rss_mib(), 1)]
            rounds = []
            for index in range(1, args.rounds + 1):
                rounds.append(anyio.run(one_round, server.url, index, args.plans))
                memory.append(round(server.rss_mib(), 1))
                rounds[-1]["rss_after_mib"] = memory[-1]
        except BaseException:
            print("".join(server.lines[-40:]), file=sys.stderr)
            raise
        finally:
            server.stop()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "delay_s": args.delay,
              "max_running": args.max_running or args.plans,
              "load_average_1min_after": round(os.getloadavg()[0], 1), "niceness": os.nice(0),
              "rss_start_mib": memory[0], "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = ["| round | plans | events delivered (live) | wall s | submit p50 / p99 ms | "
             "lag p50 / p99 / max ms | server RSS after, MiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | {r['plans']} | {r['events']} ({r['live_events']}) | {r['wall_s']} | "
                     f"{r['submit_ms']['p50']} / {r['submit_ms']['p99']} | {r['lag_ms']['p50']} / "
                     f"{r['lag_ms']['p99']} / {r['lag_ms']['max']} | {r['rss_after_mib']} |")
    lines.append(f"\nServer RSS at start: {result['rss_start_mib']} MiB. {result['machine']}, "
                 f"{result['when']}; load average {result['load_average_1min_after']} after the run, "
                 f"niceness {result['niceness']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
