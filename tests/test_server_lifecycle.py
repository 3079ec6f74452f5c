"""Cancel, resume, SIGTERM and restart-resume of a real ``vibe-planner serve``; secrets stay secret."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx

from tests.fake_openai import FakeOpenAIServer, Reply, message_text, text_contains
from tests.server_process import TOKEN, ServerProcess, sse_events, stream, wait_for
from tests.test_secrets import KEY, leaks
from vibe_planner import WorkflowPersistenceManager
from vibe_planner._redact import MARKER

is_planner = text_contains("You are a planner", roles=["system"])


def submit(client: httpx.Client, vibe: str) -> str:
    answer = client.post("/v1/plans", json={"vibe": vibe})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["plan_id"])


def latest_reason(folder: Path, plan_id: str) -> str:
    checkpoint = anyio.run(WorkflowPersistenceManager(folder / ".vibe_checkpoints").latest, plan_id)
    assert checkpoint is not None
    return checkpoint.reason


def test_cancel_resume_and_the_409s_of_a_running_plan(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, delay=60) as server, server.client() as client:
        plan_id = submit(client, "a slow plan")
        wait_for(client, plan_id, ["node_started"])
        for answer in (client.delete(f"/v1/plans/{plan_id}"), client.post(f"/v1/plans/{plan_id}/resume"),
                       client.post("/v1/plans", json={"vibe": "a slow plan"})):
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"]["type"] == "PlanStateError"
        cancelled = client.post(f"/v1/plans/{plan_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        plan = client.get(f"/v1/plans/{plan_id}").json()
        assert plan["status"] == "cancelled" and plan["latest_checkpoint"]["reason"] == "cancelled"
        assert stream(client, plan_id)[-1]["data"]["status"] == "cancelled"
        again = client.post(f"/v1/plans/{plan_id}/cancel")
        assert again.status_code == 409 and "is not running" in again.json()["error"]["message"]
        seen = client.get(f"/v1/plans/{plan_id}").json()["last_event_id"]
        resumed = client.post(f"/v1/plans/{plan_id}/resume")
        assert resumed.status_code == 202 and resumed.json()["plan_id"] == plan_id
        started = wait_for(client, plan_id, ["plan_created"], last_event_id=seen)
        assert started["data"]["resumed_from"] == plan["latest_checkpoint"]["checkpoint_id"]
        assert client.post(f"/v1/plans/{plan_id}/cancel").json()["status"] == "cancelled"
        assert client.post("/v1/plans/never-seen/resume").status_code == 404
        assert client.post("/v1/plans/never-seen/cancel").status_code == 404
        assert client.delete(f"/v1/plans/{plan_id}").status_code == 204
        assert not (tmp_path / ".vibe_checkpoints" / plan_id).exists()


def test_sigterm_leaves_cancelled_checkpoints_and_the_next_start_resumes(tmp_path: Path) -> None:
    vibes = ["first slow plan", "second slow plan"]
    streams: list[list[dict[str, Any]]] = []
    with ServerProcess(tmp_path, delay=60) as server, server.client() as client:
        ids = [submit(client, vibe) for vibe in vibes]
        for plan_id in ids:
            wait_for(client, plan_id, ["node_started"])
        watching = threading.Event()

        def watch(plan_id: str) -> None:  # a client streaming while the server stops
            with server.client() as http, http.stream("GET", f"/v1/plans/{plan_id}/events") as response:
                watching.set()
                streams.append(list(sse_events(response)))

        watcher = threading.Thread(target=watch, args=(ids[0],))
        watcher.start()
        watching.wait()
        assert server.terminate() == -signal.SIGTERM  # uvicorn ends as the signal would
        watcher.join()
    last = streams[0][-1]["data"]
    assert {k: v for k, v in last.items() if k not in ("id", "at")} == {
        "kind": "plan_ended", "plan_id": ids[0], "status": "cancelled", "error": None}
    assert [latest_reason(tmp_path, plan_id) for plan_id in ids] == ["cancelled", "cancelled"]
    markers = sorted(p.stem for p in (tmp_path / ".vibe_server" / "running").iterdir())
    assert markers == sorted(ids)
    assert "Traceback" not in server.log

    with ServerProcess(tmp_path, "--no-resume") as server, server.client() as client:  # configurable
        listed = {p["plan_id"]: p for p in client.get("/v1/plans").json()["plans"]}
        assert {listed[i]["status"] for i in ids} == {"cancelled"} and not any(listed[i]["live"] for i in ids)

    with ServerProcess(tmp_path) as server, server.client() as client:
        for plan_id in ids:
            events = stream(client, plan_id)
            assert events[0]["data"]["resumed_from"] is not None
            assert events[-1]["data"]["status"] == "completed"
            assert client.get(f"/v1/plans/{plan_id}").json()["progress"]["completed"] == 10
        assert list((tmp_path / ".vibe_server" / "running").iterdir()) == []
        assert f"resumed plan {ids[0]}" in server.log


def test_after_a_sigkill_the_next_start_resumes_the_plans_that_were_running(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, delay=60) as server, server.client() as client:
        plan_id = submit(client, "killed mid-run")
        wait_for(client, plan_id, ["node_started"])
        server.kill()
    assert latest_reason(tmp_path, plan_id) == "planned"  # no goodbye: the process just died
    with ServerProcess(tmp_path) as server, server.client() as client:
        events = stream(client, plan_id)
        assert events[0]["data"]["resumed_from"] is not None
        assert events[-1]["data"]["status"] == "completed"


def test_tokens_and_api_keys_reach_no_answer_event_log_or_file(tmp_path: Path) -> None:
    plan = json.dumps({"nodes": [{"id": "outline", "instructions": "Outline it."},
                                 {"id": "draft", "instructions": "Draft it.", "depends_on": ["outline"]}]})
    said: list[str] = []
    with FakeOpenAIServer() as llm:
        llm.on(lambda body: is_planner(body) and "plan me" in message_text(body), plan)
        llm.set_default(Reply.error(401, f"Incorrect API key provided: {KEY}"))
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": llm.base_url, "VIBE_PLANNER_MODEL": "gpt-4o-mini"}
        with ServerProcess(tmp_path, "--max-attempts", "1", env=env) as server, server.client() as client:
            for vibe in ("plan me, then fail", "this planning fails"):
                answer = client.post("/v1/plans", json={"vibe": vibe})
                said.append(answer.text)
                with client.stream("GET", f"/v1/plans/{answer.json()['plan_id']}/events") as response:
                    said.append(response.read().decode())
                said.append(client.get(f"/v1/plans/{answer.json()['plan_id']}").text)
            said += [client.get(path).text for path in ("/v1/plans", "/v1/checkpoints", "/v1/health")]
            said += [client.get(f"/v1/checkpoints/{i['checkpoint_id']}").text
                     for i in client.get("/v1/checkpoints").json()]
            server.terminate()
        assert llm.requests and llm.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"  # it was used
    assert '"kind":"node_failed"' in said[1] and '"status":"failed"' in said[1]
    assert '"status":"failed","error":{"type":"PlanningError"' in said[4]
    assert MARKER in said[1] and MARKER in said[4]  # the key was echoed, and redacted
    files = [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    everything = "\n".join([*said, server.log, *files])
    assert leaks(everything) == []
    assert leaks(everything, TOKEN) == []
