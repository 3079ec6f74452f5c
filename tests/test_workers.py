"""Workers on the suite's PostgreSQL: real worker processes (tests/pg_worker.py), killed with
SIGKILL, paused with SIGSTOP, stopped with SIGTERM; what they did is read back from the tables.

Every accepted write is logged by a trigger the tests add (``<schema>.writes``: plan, lease
token, table, snapshot sequence, in commit order per plan since writes of a plan are serialised
by its lease row), so "no two workers ran a plan at once" is checked on the tokens the store
accepted, not on what the workers say.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from tests import pg
from tests.pg_worker import NODE_RUNS
from vibe_planner import (
    MetaPlanner,
    PostgresCheckpointStore,
    ProgressEvent,
    RunFinished,
    Worker,
    WorkflowPersistenceManager,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "pg_worker.py"
HANG_GUARD = 600.0
"""Seconds after which a wait gives up with a message instead of hanging the suite."""

AUDIT = """
CREATE TABLE {s}.writes (id bigserial PRIMARY KEY, plan_id text NOT NULL, token bigint NOT NULL,
                         what text NOT NULL, sequence bigint);
CREATE FUNCTION {s}.audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO {s}.writes (plan_id, token, what, sequence)
    VALUES (NEW.plan_id, NEW.token, TG_TABLE_NAME, (to_jsonb(NEW) ->> 'sequence')::bigint);
    RETURN NEW;
END $$;
CREATE TRIGGER audit AFTER INSERT ON {s}.vp_snapshots FOR EACH ROW EXECUTE FUNCTION {s}.audit();
CREATE TRIGGER audit AFTER INSERT ON {s}.vp_journal_chunks FOR EACH ROW EXECUTE FUNCTION {s}.audit()
"""


class Fleet:
    """Worker processes on one schema, and a way to query that schema."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.store = pg.pg_store()
        self.schema = self.store.schema
        self.tmp_path = tmp_path
        self.options = options
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        anyio.run(self.store.plan_ids)  # creates the store's tables
        self.sql(NODE_RUNS)
        self.sql(AUDIT)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(pg.server().url, autocommit=True) as conn:
            cursor = conn.execute(query.replace("{s}", self.schema), params or None)
            return cursor.fetchall() if cursor.description else []

    def one(self, query: str, *params: Any) -> Any:
        return self.sql(query, *params)[0][0]

    def submit(self, count: int) -> list[str]:
        planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(store=self.store))

        async def submit_all() -> list[str]:
            return [await planner.submit(f"plan number {i}") for i in range(count)]

        return anyio.run(submit_all)

    def start(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(WORKER), self.schema]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        log = self.tmp_path / f"worker-{len(self.logs)}.log"
        with log.open("wb") as stream:
            process = subprocess.Popen(argv, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                                       env={**os.environ, "VIBE_PLANNER_STORE": pg.server().url})
        self.workers.append(process)
        self.logs[process.pid] = log
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return self.logs[process.pid].read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(f"--- {pid}\n" + path.read_text(errors="replace")[-3000:]
                         for pid, path in self.logs.items())

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + HANG_GUARD
        while not condition():
            for process in self.workers:
                code = process.poll()
                if code is not None and code != -signal.SIGKILL and process.returncode not in (0,):
                    raise AssertionError(f"worker {process.pid} exited with {code}:\n{self.log(process)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}\n{self.all_logs()}")
            time.sleep(0.05)

    def queue_states(self) -> dict[str, int]:
        return dict(self.sql("SELECT state, count(*) FROM {s}.vp_queue GROUP BY state"))

    def stop(self) -> None:
        """SIGTERM every worker still running (once it is up: a worker still importing just dies)."""
        for process in self.workers:
            if process.poll() is None:
                self.wait_for(lambda p=process: "ready" in self.log(p), f"worker {process.pid} to start")
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
        for process in self.workers:
            process.wait(timeout=120)


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(**options: Any) -> Fleet:
        fleets.append(Fleet(tmp_path, **options))
        return fleets[-1]

    yield make
    for fleet in fleets:
        for process in fleet.workers:
            if process.poll() is None:
                process.kill()
                process.wait()


def check_history(fleet: Fleet, plans: list[str], nodes: int) -> None:
    """Every plan completed, once, with no node recorded twice and no two writers at once."""
    assert fleet.queue_states() == {"completed": len(plans)}
    bad = fleet.sql("SELECT plan_id, node_id, pid FROM {s}.node_runs WHERE recorded AND current")
    assert bad == [], f"recorded nodes ran again: {bad}"
    ran = fleet.one("SELECT count(DISTINCT (plan_id, node_id)) FROM {s}.node_runs")
    assert ran == len(plans) * nodes
    tokens: dict[str, list[int]] = defaultdict(list)
    sequences: dict[str, list[int]] = defaultdict(list)
    for plan_id, token, what, sequence in fleet.sql(
            "SELECT plan_id, token, what, sequence FROM {s}.writes ORDER BY id"):
        tokens[plan_id].append(token)
        if what == "vp_snapshots":
            sequences[plan_id].append(sequence)
    assert set(tokens) == set(plans)
    for plan_id in plans:
        # One writer at a time: once a newer lease wrote, no older one ever wrote again.
        assert tokens[plan_id] == sorted(tokens[plan_id]), (plan_id, tokens[plan_id])
        # No fork: one chain of snapshots, 1, 2, 3... each written once, in order.
        assert sequences[plan_id] == list(range(1, len(sequences[plan_id]) + 1)), sequences[plan_id]
    manager = WorkflowPersistenceManager(store=fleet.store)

    async def final_states() -> list[tuple[int, int]]:
        found = []
        for plan_id in plans:
            infos = sorted(await manager.list_checkpoints(plan_id), key=lambda i: i.sequence)
            done = [i.completed_nodes for i in infos]
            assert done == sorted(done), (plan_id, done)  # progress never went back
            # The newest is "final", or "interval" if its worker died right after it (the
            # resume then finds nothing left to run and returns the stored result).
            assert infos[-1].reason in ("final", "interval"), infos[-1]
            found.append((infos[-1].completed_nodes, infos[-1].total_nodes))
        return found

    assert set(anyio.run(final_states)) == {(nodes, nodes)}


def test_workers_killed_at_random_lose_no_plan_and_never_run_a_recorded_node_again(
        fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(nodes=20, concurrency=4, lease_ttl=1.5, poll_interval=0.3)
    plans = fleet.submit(60)
    for _ in range(3):
        fleet.start()
    rng = random.Random(16)
    kills, threshold = 0, 60

    def done_or_due() -> bool:
        return fleet.queue_states() == {"completed": 60} or \
            fleet.one("SELECT count(*) FROM {s}.node_runs") >= threshold

    while True:
        fleet.wait_for(done_or_due, "progress")
        if fleet.queue_states() == {"completed": 60}:
            break
        # Progress was made since the last kill: kill a worker in the middle of its plans.
        alive = [p for p in fleet.workers if p.poll() is None]
        victim = rng.choice(alive)
        victim.kill()
        victim.wait()
        kills += 1
        fleet.start()
        threshold = fleet.one("SELECT count(*) FROM {s}.node_runs") + 100
    fleet.stop()
    assert all(p.returncode in (0, -signal.SIGKILL) for p in fleet.workers), fleet.all_logs()
    assert kills >= 3
    check_history(fleet, plans, 20)
    taken_over = fleet.one("SELECT count(*) FROM (SELECT plan_id FROM {s}.writes GROUP BY plan_id "
                           "HAVING count(DISTINCT token) > 1) AS t")
    assert taken_over >= 1  # dead workers' plans were resumed by others


def test_a_paused_worker_is_fenced_off_and_stops_its_run_cleanly(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(nodes=20, concurrency=1, lease_ttl=1.0, poll_interval=0.2, node_seconds=0.05)
    plans = fleet.submit(1)
    paused = fleet.start()
    fleet.wait_for(lambda: fleet.one("SELECT count(*) FROM {s}.node_runs") >= 3, "the first nodes")
    old = fleet.one("SELECT token FROM {s}.vp_leases")
    os.kill(paused.pid, signal.SIGSTOP)
    fleet.start()  # takes the plan over once the paused worker's lease has expired
    fleet.wait_for(lambda: fleet.queue_states() == {"completed": 1}, "the plan to complete elsewhere")
    os.kill(paused.pid, signal.SIGCONT)
    refused = f"lease {old} of plan '{plans[0]}' is no longer held"
    fleet.wait_for(lambda: refused in fleet.log(paused), "the paused worker to be fenced off")
    assert paused.poll() is None  # the run stopped; the worker goes on
    fleet.stop()
    assert paused.returncode == 0 and "stopped cleanly" in fleet.log(paused)
    check_history(fleet, plans, 20)
    tokens = [t for (t,) in fleet.sql("SELECT DISTINCT token FROM {s}.writes ORDER BY token")]
    assert tokens[0] == old and len(tokens) == 2


def test_sigterm_releases_the_lease_at_once_and_hands_the_plan_back(
        fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(nodes=20, concurrency=1, lease_ttl=600, poll_interval=0.2, node_seconds=0.05)
    plans = fleet.submit(1)
    first = fleet.start()
    fleet.wait_for(lambda: fleet.one("SELECT count(*) FROM {s}.node_runs") >= 3, "the first nodes")
    first.terminate()
    assert first.wait(timeout=120) == 0, fleet.log(first)
    # Released, not left to expire (it would last ten minutes), and back in the queue.
    assert fleet.sql("SELECT * FROM {s}.vp_leases") == []
    assert fleet.queue_states() == {"queued": 1}
    latest = anyio.run(WorkflowPersistenceManager(store=fleet.store).latest, plans[0])
    assert latest is not None and latest.reason == "cancelled"
    fleet.start()
    fleet.wait_for(lambda: fleet.queue_states() == {"completed": 1}, "another worker to finish the plan")
    fleet.stop()
    check_history(fleet, plans, 20)


def test_submit_needs_a_postgres_store(tmp_path: Path) -> None:
    planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(tmp_path / "cp"))
    with pytest.raises(TypeError, match="needs a PostgresCheckpointStore"):
        anyio.run(planner.submit, "a vibe")


def test_a_plan_is_queued_once_until_it_ends() -> None:
    store: PostgresCheckpointStore = pg.pg_store()
    planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(store=store))

    async def twice() -> tuple[str, str]:
        return await planner.submit("same vibe"), await planner.submit("same vibe")

    first, second = anyio.run(twice)
    assert first == second
    with psycopg.connect(pg.server().url) as conn:
        rows = conn.execute(f"SELECT plan_id, state FROM {store.schema}.vp_queue").fetchall()
    assert rows == [(first, "queued")]


def test_the_command_line_submits_and_works(tmp_path: Path) -> None:
    url = f"{pg.server().url}?schema={pg.fresh_schema()}"
    script = Path(sys.executable).parent / "vibe-planner"
    env = {**os.environ, "VIBE_PLANNER_STORE": url}

    def cli(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *argv], cwd=tmp_path, env={**env, **extra}, capture_output=True,
                              text=True, timeout=300)

    submitted = cli("submit", "a haiku about tea")
    assert submitted.returncode == 0, submitted.stderr
    plan_id = submitted.stdout.split()[-1]
    assert submitted.stdout == f"queued plan {plan_id}\n"
    worked = cli("worker", "--until-idle", "--poll-interval", "0.2", "--concurrency", "2")
    assert worked.returncode == 0, worked.stderr
    assert f"plan {plan_id} completed" in worked.stderr and "1 plan(s) completed here" in worked.stderr
    listed = cli("checkpoints", "list", plan_id)
    assert listed.returncode == 0 and "final" in listed.stdout
    password = pg.server().password
    assert all(password not in text for text in (submitted.stdout, submitted.stderr, worked.stderr,
                                                 listed.stdout))
    nowhere = cli("submit", "a haiku about tea", VIBE_PLANNER_STORE=str(tmp_path / "files"))
    assert nowhere.returncode == 2 and "submit needs a PostgreSQL store" in nowhere.stderr


def idle_after_listening(store: PostgresCheckpointStore) -> bool:
    """Whether the worker listens, and has looked at the queue since, and is not looking now."""
    with psycopg.connect(pg.server().url) as conn:
        rows = conn.execute("SELECT query, state, state_change FROM pg_stat_activity "
                            "WHERE application_name = 'vibe_planner' AND datname = 'vibe'").fetchall()
    listening = [changed for query, state, changed in rows if query.startswith("LISTEN") and state == "idle"]
    looked = [changed for query, state, changed in rows if f"{store.schema}.vp_queue q SET state = 'running'"
              in query and state == "idle"]
    busy = [query for query, state, _ in rows if state != "idle" and store.schema in query]
    return bool(listening and looked and not busy and max(looked) > max(listening))


@pytest.mark.anyio
async def test_an_idle_worker_is_woken_by_a_submission_not_by_polling() -> None:
    store = pg.pg_store()
    finished = anyio.Event()

    def on_event(event: ProgressEvent) -> None:
        if isinstance(event, RunFinished):
            finished.set()

    planner = MetaPlanner(persistence_manager=WorkflowPersistenceManager(store=store),
                          progress_callback=on_event)
    worker = Worker(planner, poll_interval=3600)  # it will not look again on its own within the test
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            while not idle_after_listening(store):  # noqa: ASYNC110 - a state of the server, no event to wait on
                await anyio.sleep(0.02)
            plan_id = await planner.submit("woken by NOTIFY")
            await finished.wait()  # the plan ran: the worker woke up
            tg.cancel_scope.cancel()
    latest = await planner.persistence_manager.latest(plan_id)
    assert latest is not None and latest.reason == "final" and not latest.pending_nodes
