"""Human in the loop across real processes: run until waiting, answer from the CLI, resume.

The plan (tests/hitl_worker.py) has two approvals on different branches. Runs are separate
processes that exit (or are SIGKILLed); answers come from other processes, the real command
line among them. What is checked never depends on where a kill landed: a node recorded as
completed never runs again, an answer is recorded whole or not at all and never changes once
recorded, a second answer is refused, and every output of the final checkpoint is what the
node computes from its recorded inputs.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import allow_bodies
from tests.hitl_worker import APPROVALS, PLAN_ID, expected_output, nodes
from tests.test_crash import intact_entries, log_lines, recorded_completed
from tests.torture.support import ForkServer

WORKER = Path(__file__).with_name("hitl_worker.py")
CLI = Path(sys.executable).parent / "vibe-planner"
WORK_NODES = [n.id for n in nodes() if n.kind == "work"]


def run_worker(checkpoint_dir: Path, log: Path) -> list[str]:
    done = subprocess.run([sys.executable, str(WORKER), "run", str(checkpoint_dir), str(log)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def cli(checkpoint_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args, "--checkpoint-dir", str(checkpoint_dir)],
                          capture_output=True, text=True, timeout=120)


def latest(checkpoint_dir: Path) -> dict[str, Any]:
    """The state as of the plan's newest snapshot, read with orjson (not through the library)."""
    folder = checkpoint_dir / PLAN_ID
    snapshots = sorted(folder.glob("cp-*.json"))
    return whole_state(folder, orjson.loads(snapshots[-1].read_bytes())) if snapshots else {}


def whole_state(folder: Path, document: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as the whole state, as docs/checkpoints.md's file format says: a base is it;
    a delta applies to its parent's results those of the journal records it names, then its own,
    and carries the requests (all of them) itself."""
    if document.get("kind") != "delta":
        return document
    state = dict(whole_state(folder, orjson.loads((folder / f"{document['parent']}.json").read_bytes())))
    results = dict(state["node_results"])
    if document["journal"]:
        journal = folder / f"journal-{document['run_id']}.jsonl"
        records = [entry["result"] for entry in intact_entries(journal) if "result" in entry]
        first, named = document["journal"]["first"], document["journal"]["nodes"]
        for record, node_id in zip(records[first:first + len(named)], named, strict=True):
            assert record["node_id"] == node_id
            results[node_id] = record
    results.update(document["node_results"])
    order = [n.id for n in nodes()]
    completed = [n for n in order if results.get(n, {}).get("status") == "completed"]
    state.update({key: value for key, value in document.items() if key not in ("node_results", "kind")},
                 node_results=results, completed_nodes=completed,
                 failed_nodes=[n for n in order if results.get(n, {}).get("status") == "failed"],
                 pending_nodes=[n for n in order if results.get(n, {}).get("status")
                                not in ("completed", "failed")],
                 input_requests=document.get("input_requests", []))
    return state


def requests_on_disk(checkpoint_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in latest(checkpoint_dir).get("input_requests", [])}


def files(folder: Path) -> dict[str, bytes]:
    """The plan's checkpoints and journals, byte for byte.

    Hidden files are left out: the lease's lock file, and the temporary file of a write that a
    SIGKILL cut short (never read; the store clears it away).
    """
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def check_outputs(document: dict[str, Any]) -> None:
    """Every completed output is what its node computes from the recorded outputs it read."""
    results = document["node_results"]
    for node in nodes():
        result = results[node.id]
        assert result["status"] == "completed", node.id
        if node.kind == "work":
            inputs = {dep: results[dep]["output"] for dep in node.depends_on}
            assert result["output"] == expected_output(node.id, inputs), node.id
    for team in APPROVALS:
        request = requests_on_disk_of(document)[f"{team}:1"]
        assert results[team]["output"] == request["answer"]  # the recorded answer, applied


def requests_on_disk_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in document.get("input_requests", [])}


def test_two_approvals_run_wait_answer_from_the_cli_resume(tmp_path: Path) -> None:
    checkpoint_dir, log = tmp_path / "cp", tmp_path / "effects.log"
    first = run_worker(checkpoint_dir, log)
    assert first[0] == "waiting" and sorted(first[1:]) == ["brand:1", "legal:1"]
    assert latest(checkpoint_dir)["reason"] == "waiting"
    listing = cli(checkpoint_dir, "checkpoints", "list", PLAN_ID)
    assert listing.returncode == 0 and "WAITING FOR" in listing.stdout
    assert "legal:1, brand:1" in listing.stdout or "brand:1, legal:1" in listing.stdout
    shown = cli(checkpoint_dir, "checkpoints", "show", latest(checkpoint_dir)["checkpoint_id"])
    assert shown.stdout.count("waiting for") == 2 and "Does legal approve the draft?" in shown.stdout

    approved = cli(checkpoint_dir, "approve", PLAN_ID, "legal:1", "--comment", "legal ok")
    assert approved.returncode == 0, approved.stderr
    assert latest(checkpoint_dir)["reason"] == "answered"
    offset = log.stat().st_size
    second = run_worker(checkpoint_dir, log)
    assert second == ["waiting", "brand:1"]
    assert sorted(log_lines(log, offset)) == ["legal", "legal-done"]

    value = '{"approved": true, "comment": "on brand"}'
    answered = cli(checkpoint_dir, "respond", PLAN_ID, "brand:1", "--value", value)
    assert answered.returncode == 0, answered.stderr
    offset = log.stat().st_size
    assert run_worker(checkpoint_dir, log) == ["completed"]
    assert sorted(log_lines(log, offset)) == ["brand", "brand-done", "publish"]

    # Each body ran exactly once over the three processes, and the outputs hold together.
    assert Counter(log_lines(log)) == Counter([*WORK_NODES, *APPROVALS])
    document = latest(checkpoint_dir)
    check_outputs(document)
    answers = {r["id"]: r["answer"] for r in document["input_requests"]}
    assert answers == {"legal:1": {"approved": True, "comment": "legal ok"},
                       "brand:1": {"approved": True, "comment": "on brand"}}


def test_refused_answers_change_nothing(tmp_path: Path) -> None:
    checkpoint_dir, log = tmp_path / "cp", tmp_path / "effects.log"
    assert run_worker(checkpoint_dir, log)[0] == "waiting"
    before = files(checkpoint_dir / PLAN_ID)
    cases = {
        "schema": (["respond", PLAN_ID, "legal:1", "--value", '{"approved": "yes"}'],
                   "does not match its schema: $.approved: expected boolean, got string"),
        "extra property": (["respond", PLAN_ID, "legal:1", "--value", '{"approved": true, "x": 1}'],
                           "unexpected property 'x'"),
        "not JSON": (["respond", PLAN_ID, "legal:1", "--value", "yes"], "--value is not JSON"),
        "unknown request": (["approve", PLAN_ID, "legal:7"], "has no request 'legal:7'"),
        "hostile request id": (["approve", PLAN_ID, "../../etc"], "invalid request_id"),
        "plan not waiting": (["approve", "no-such-plan", "legal:1"], "is not waiting for an answer"),
    }
    for name, (args, message) in cases.items():
        done = cli(checkpoint_dir, *args)
        assert done.returncode == 2, (name, done.stderr)
        assert message in done.stderr, (name, done.stderr)
    assert files(checkpoint_dir / PLAN_ID) == before  # nothing recorded, nothing lost
    assert not (checkpoint_dir / "no-such-plan").exists()

    assert cli(checkpoint_dir, "reject", PLAN_ID, "legal:1", "--comment", "no").returncode == 0
    recorded = files(checkpoint_dir / PLAN_ID)
    again = cli(checkpoint_dir, "approve", PLAN_ID, "legal:1")
    assert again.returncode == 2 and "already answered" in again.stderr
    assert files(checkpoint_dir / PLAN_ID) == recorded
    assert requests_on_disk(checkpoint_dir)["legal:1"]["answer"] == {"approved": False, "comment": "no"}
    # Rejected: the legal branch fails for good, the rest goes on and waits for brand.
    assert run_worker(checkpoint_dir, log) == ["failed", "brand:1"]
    results = latest(checkpoint_dir)["node_results"]
    assert results["legal"]["error"]["type"] == "ApprovalRejectedError"
    assert results["legal-done"]["status"] == "skipped" and results["publish"]["status"] == "skipped"


# -- SIGKILL at random points --------------------------------------------------------------------
class Scenario:
    """One plan driven to completion by killed and unkilled processes; checks after each step."""

    def __init__(self, root: Path, rng: random.Random, server: ForkServer) -> None:
        self.dir, self.log, self.allow = root / "cp", root / "effects.log", root / "allow"
        self.out = root / "out.txt"
        self.rng, self.server = rng, server
        self.answers: dict[str, dict[str, Any]] = {}  # request id → the answer recorded on disk
        self.kills = 0
        self.steps = 0

    def done(self) -> bool:
        return bool(latest(self.dir)) and latest(self.dir)["reason"] == "final" \
            and not latest(self.dir)["pending_nodes"]

    def step(self) -> None:
        self.steps += 1
        pending = [r for r in requests_on_disk(self.dir).values()
                   if r["status"] == "pending" and r["node_id"] not in latest(self.dir)["completed_nodes"]]
        if self.answers and self.rng.random() < 0.15:
            self.answer_again(self.rng.choice(sorted(self.answers)))
        elif pending and self.rng.random() < 0.6:
            self.answer(self.rng.choice(pending)["id"])
        else:
            self.run()
        self.check_answers_kept()

    def fork(self, argv: list[str], kill_after: float | None) -> dict[str, Any]:
        job = {"module": "tests.hitl_worker", "argv": argv, "out": str(self.out)}
        [result] = self.server.run([job], kill_after=kill_after, timeout=60)
        assert not result["timed_out"], self.out.read_text()
        self.kills += result["killed"]
        return result

    def run(self) -> None:
        recorded = recorded_completed(self.dir, PLAN_ID)
        offset = self.log.stat().st_size if self.log.exists() else 0
        gated = self.rng.random() < 0.6
        allow_bodies(self.allow, self.rng.randint(0, 8) if gated else 10_000)
        kill_after = self.rng.uniform(0.0, 0.25) if gated else None
        result = self.fork(["run", str(self.dir), str(self.log), str(self.allow)], kill_after)
        assert result["killed"] or result["returncode"] == 0, self.out.read_text()
        again = set(log_lines(self.log, offset)) & recorded
        assert not again, f"recorded nodes ran again: {sorted(again)}"

    def answer(self, request_id: str) -> None:
        value = {"approved": True, "comment": f"step {self.steps}"}
        result = self.fork(["cli", "respond", PLAN_ID, request_id, "--value", orjson.dumps(value).decode(),
                            "--checkpoint-dir", str(self.dir)], self.kill_time())
        on_disk = requests_on_disk(self.dir)[request_id]
        if result["killed"]:  # recorded whole, or not at all
            assert on_disk["status"] == "pending" or on_disk["answer"] == value
        else:
            assert result["returncode"] == 0, self.out.read_text()
            assert on_disk["status"] == "answered" and on_disk["answer"] == value
        if on_disk["status"] == "answered":
            self.answers[request_id] = on_disk["answer"]

    def kill_time(self) -> float | None:
        """A random moment to kill an answering process, or none: then the answer is recorded
        whatever the machine's load, so the plan makes progress by construction."""
        return self.rng.uniform(0.0, 0.3) if self.rng.random() < 0.7 else None

    def answer_again(self, request_id: str) -> None:
        before = files(self.dir / PLAN_ID)
        result = self.fork(["cli", "approve", PLAN_ID, request_id, "--comment", "twice",
                            "--checkpoint-dir", str(self.dir)], None)
        assert result["returncode"] == 2 and "already answered" in self.out.read_text()
        assert files(self.dir / PLAN_ID) == before

    def check_answers_kept(self) -> None:
        on_disk = requests_on_disk(self.dir)
        for request_id, answer in self.answers.items():
            assert on_disk[request_id]["answer"] == answer, f"the answer to {request_id} changed"


def test_sigkill_at_random_points_loses_no_answer_and_repeats_no_node(tmp_path: Path) -> None:
    rng = random.Random(14)
    server = ForkServer()
    kills, scenarios, steps = 0, 0, 0
    try:
        while kills < 30:
            scenario = Scenario(tmp_path / f"s{scenarios}", rng, server)
            (tmp_path / f"s{scenarios}").mkdir()
            scenarios += 1
            while not scenario.done():
                scenario.step()
                assert scenario.steps < 200, "the plan makes no progress"
            document = latest(scenario.dir)
            check_outputs(document)
            assert {r["id"] for r in document["input_requests"]} == {"legal:1", "brand:1"}
            assert set(scenario.answers) == {"legal:1", "brand:1"}
            kills += scenario.kills
            steps += scenario.steps
    finally:
        server.close()
    assert kills >= 30 and scenarios >= 1
    print(f"{kills} kills over {steps} steps in {scenarios} plans")


