"""Human in the loop over HTTP: a plan waits, its request is answered with POST, it completes."""

from __future__ import annotations

from pathlib import Path

from tests.server_process import ServerProcess, stream

PRESS_RELEASE = {"description": "a press release for the new roastery",
                 "constraints": ["must be approved by legal"]}


def test_a_waiting_plan_is_answered_over_http_and_completes(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server, server.client() as client:
        plan_id = client.post("/v1/plans", json={"vibe": PRESS_RELEASE}).json()["plan_id"]
        events = stream(client, plan_id)
        assert "waiting" in [e["event"] for e in events]
        assert events[-1]["data"]["status"] == "waiting"
        plan = client.get(f"/v1/plans/{plan_id}").json()
        assert plan["status"] == "waiting"
        [request] = plan["pending_requests"]
        assert request["node_id"] == "approval" and request["json_schema"]["required"] == ["approved"]
        assert {n["id"]: n["status"] for n in plan["nodes"]}["approval"] == "waiting"
        listed = client.get("/v1/plans", params={"status": "waiting"}).json()["plans"]
        assert [p["plan_id"] for p in listed] == [plan_id]
        responses = f"/v1/plans/{plan_id}/responses"
        for body, status, kind in [
            ({"request_id": request["id"], "value": {"approved": "yes"}}, 422, "InvalidAnswerError"),
            ({"request_id": "approval:99", "value": {"approved": True}}, 404, "UnknownRequestError"),
            ({"request_id": request["id"]}, 422, "RequestValidationError"),
        ]:
            answer = client.post(responses, json=body)
            assert answer.status_code == status and answer.json()["error"]["type"] == kind, answer.text
        assert client.get(f"/v1/plans/{plan_id}").json()["pending_requests"] == [request]  # nothing recorded
        answered = client.post(responses, json={"request_id": request["id"],
                                                "value": {"approved": True, "comment": "fine by legal"}})
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "answered"
        rest = stream(client, plan_id, last_event_id=plan["last_event_id"])  # the resumed run
        assert rest[0]["event"] == "plan_created" and rest[-1]["data"]["status"] == "completed"
        assert "node_started" not in [e["event"] for e in rest if e["data"].get("node_id") == "brief"]
        done = client.get(f"/v1/plans/{plan_id}").json()
        assert done["status"] == "completed" and done["pending_requests"] == []
        again = client.post(responses, json={"request_id": request["id"], "value": {"approved": False}})
        assert again.status_code == 409, again.text
        other = client.post("/v1/plans", json={"vibe": "nothing to approve"}).json()["plan_id"]
        stream(client, other)
        answer = client.post(f"/v1/plans/{other}/responses", json={"request_id": "x:1", "value": 1})
        assert answer.status_code in (404, 409), answer.text
