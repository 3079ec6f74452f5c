"""The HTTP API against a real ``vibe-planner serve`` (uvicorn) on loopback, driven with httpx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server_process import TOKEN, ServerProcess, sse_events, stream

DEEP: list[object] = [1]
for _ in range(300):
    DEEP = [DEEP]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("server")) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def submit(client: httpx.Client, vibe: object, **fields: object) -> str:
    answer = client.post("/v1/plans", json={"vibe": vibe, **fields})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["plan_id"])


def test_a_plan_runs_in_the_background_and_its_events_stream_in_order(client: httpx.Client) -> None:
    plan_id = submit(client, {"description": "a launch post", "constraints": ["under 800 words"]})
    events = stream(client, plan_id)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "plan_created" and kinds[-2:] == ["run_finished", "plan_ended"]
    assert kinds.count("node_completed") == 11 and "node_failed" not in kinds
    numbers = [int(e["id"].rsplit("-", 1)[1]) for e in events]
    assert numbers == list(range(1, len(events) + 1))  # every event, numbered, in order
    last = events[-1]["data"]
    assert last == {"id": events[-1]["id"], "at": last["at"], "kind": "plan_ended", "plan_id": plan_id,
                    "status": "completed", "error": None}
    stamps = [e["data"]["at"] for e in events]
    assert stamps == sorted(stamps)
    plan = client.get(f"/v1/plans/{plan_id}").json()
    assert plan["status"] == "completed" and plan["live"] is True
    assert plan["progress"] == {"total": 11, "completed": 11, "running": 0, "failed": 0}
    assert {n["status"] for n in plan["nodes"]} == {"completed"}
    by_id = {n["id"]: n for n in plan["nodes"]}
    assert by_id["outline"]["depends_on"] == ["audience", "voice", "constraint-1"]
    assert plan["usage"] is not None and plan["latest_checkpoint"]["reason"] == "final"
    assert plan["last_event_id"] == events[-1]["id"]


def test_a_reconnecting_client_gets_exactly_what_it_missed(client: httpx.Client) -> None:
    plan_id = submit(client, "replay me")
    everything = stream(client, plan_id)
    for cut in (1, len(everything) // 2, len(everything) - 1):
        rest = stream(client, plan_id, last_event_id=everything[cut - 1]["id"])
        assert rest == everything[cut:]
    assert stream(client, plan_id, last_event_id=everything[-1]["id"]) == []
    # An id from a log that is gone (a server restarted since): the whole log again.
    assert stream(client, plan_id, last_event_id="0000dead-3") == everything


@pytest.mark.parametrize("bad", ["7", "abc-", "x-1-2-3", "-5", "ab-12a"])
def test_a_malformed_last_event_id_is_a_400(client: httpx.Client, bad: str) -> None:
    plan_id = submit(client, "replay me")
    answer = client.get(f"/v1/plans/{plan_id}/events", headers={"Last-Event-ID": bad})
    assert answer.status_code == 400
    assert "Last-Event-ID" in answer.json()["error"]["message"]


def test_plans_are_listed_with_a_status_filter_and_pages(client: httpx.Client) -> None:
    ids = [submit(client, f"listing {i}") for i in range(3)]
    for plan_id in ids:
        stream(client, plan_id)
    page = client.get("/v1/plans", params={"status": "completed", "limit": 2}).json()
    assert page["limit"] == 2 and len(page["plans"]) == 2 and page["total"] >= 3
    assert {p["status"] for p in page["plans"]} == {"completed"}
    listed = []
    for offset in range(0, page["total"], 2):
        listed += client.get("/v1/plans", params={"status": "completed", "offset": offset,
                                                  "limit": 2}).json()["plans"]
    assert {p["plan_id"] for p in listed} >= set(ids) and len(listed) == page["total"]
    assert client.get("/v1/plans", params={"status": "waiting"}).json() == {
        "plans": [], "total": 0, "offset": 0, "limit": 50}


def test_the_token_is_required_and_never_repeated(server: ServerProcess) -> None:
    with server.client(token=None) as anonymous, server.client(token="wrong-token-123456789") as wrong:
        for http in (anonymous, wrong):
            for method, path in [("GET", "/v1/plans"), ("POST", "/v1/plans"), ("GET", "/v1/checkpoints"),
                                 ("GET", "/v1/plans/vibe-x/events"), ("DELETE", "/v1/plans/vibe-x")]:
                answer = http.request(method, path, json={"vibe": "x"})
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert answer.json()["error"]["type"] == "NotAuthenticatedError"
        assert anonymous.get("/v1/health").json()["status"] == "ok"  # probes need no token
        assert anonymous.get("/dashboard").status_code == 200  # the page holds no data
    with server.client() as http:
        answers = [http.get("/v1/plans"), http.get("/openapi.json"), http.get("/v1/health")]
    assert all(TOKEN not in a.text for a in answers)
    assert TOKEN not in server.log


HOSTILE_IDS = ["...", "a..b", "a%00b", "x" * 300, "%2e%2e", "a b", "a\\b", "~root", "-rf", "é"]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
@pytest.mark.parametrize("route", [
    "GET /v1/plans/{}", "GET /v1/plans/{}/events", "POST /v1/plans/{}/cancel",
    "POST /v1/plans/{}/resume", "DELETE /v1/plans/{}", "GET /v1/plans/{}/checkpoints",
    "GET /v1/checkpoints/{}", "DELETE /v1/checkpoints/{}", "GET /v1/checkpoints?plan_id={}",
    "GET /v1/checkpoints/verify?plan_id={}",
])
def test_hostile_ids_get_a_4xx_with_the_typed_error(client: httpx.Client, route: str, hostile: str) -> None:
    method, path = route.split(" ")  # ("%2e%2e" reaches the server as ".."; a bare ".." would not)
    answer = client.request(method, path.format(hostile))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "InvalidIdentifierError"
    assert "Traceback" not in answer.text


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param({"vibe": ""}, "InvalidVibeError", id="empty"),
    pytest.param({"vibe": {"description": "   "}}, "InvalidVibeError", id="blank"),
    pytest.param({"vibe": {"description": "x", "constraints": ["c"] * 101}}, "InvalidVibeError",
                 id="too-many-constraints"),
    pytest.param({"vibe": {"description": "x" * 100_001}}, "InvalidVibeError", id="too-long"),
    pytest.param({"vibe": 5}, "RequestValidationError", id="a-number"),
    pytest.param({"vibe": {"description": "x", "colour": "red"}}, "RequestValidationError",
                 id="unknown-field"),
    pytest.param({}, "RequestValidationError", id="no-vibe"),
    pytest.param({"vibe": "x", "plan_id": "../../etc"}, "InvalidIdentifierError", id="hostile-plan-id"),
    pytest.param({"vibe": {"description": "x", "metadata": {"a": DEEP}}}, "InvalidVibeError",
                 id="deep-vibe-metadata"),
    pytest.param({"vibe": "x", "metadata": {"a": DEEP}}, "RequestValidationError", id="deep-run-metadata"),
])
def test_malformed_vibes_get_a_4xx_with_the_typed_error(
    client: httpx.Client, body: dict[str, object], expected: str,
) -> None:
    answer = client.post("/v1/plans", json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["error"]["type"] == expected, answer.text


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(b"{not json", "RequestValidationError", id="not-json"),
    pytest.param(b"\xff\xfe", "RequestValidationError", id="not-utf8"),
    pytest.param(b"[]", "RequestValidationError", id="a-list"),
    pytest.param(b"null", "RequestValidationError", id="null"),
    pytest.param(b'{"vibe": "x", "metadata": {"a": "\\ud800"}}', "InvalidMetadataError", id="lone-surrogate"),
    pytest.param(b'{"vibe": {"description": "\\udfff"}}', "InvalidVibeError", id="surrogate-vibe"),
])
def test_a_body_that_is_not_a_proper_json_object_is_a_422(
    client: httpx.Client, content: bytes, expected: str,
) -> None:
    answer = client.post("/v1/plans", content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["error"]["type"] == expected, answer.text


def test_bodies_over_the_limit_are_refused(client: httpx.Client) -> None:
    big = json.dumps({"vibe": "x" * (2 << 20)}).encode()
    answer = client.post("/v1/plans", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["type"] == "RequestTooLarge"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield b'{"vibe": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    answer = client.post("/v1/plans", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["type"] == "RequestTooLarge"


def test_the_checkpoint_routes(client: httpx.Client, server: ServerProcess) -> None:
    plan_id = submit(client, "checkpoint me")
    stream(client, plan_id)
    infos = client.get(f"/v1/plans/{plan_id}/checkpoints").json()
    assert infos[0]["reason"] == "final" and all("path" not in i for i in infos)
    assert client.get("/v1/checkpoints", params={"plan_id": plan_id}).json() == infos
    shown = client.get(f"/v1/checkpoints/{infos[0]['checkpoint_id']}").json()
    assert shown["plan_id"] == plan_id and shown["reason"] == "final"
    usage = client.get("/v1/checkpoints/usage", params={"plan_id": plan_id}).json()
    assert usage["checkpoints"] == len(infos) and usage["bytes"] == sum(i["size_bytes"] for i in infos)
    assert client.get("/v1/checkpoints/verify", params={"plan_id": plan_id}).json() == {
        "ok": True, "checkpoints": len(infos), "problems": []}
    pruned = client.post(f"/v1/plans/{plan_id}/checkpoints/prune", json={"keep_last": 1}).json()
    # Older snapshots that the newest one (a delta) is built on are kept with it.
    assert set(pruned["deleted"]) <= {i["checkpoint_id"] for i in infos[1:]}
    assert pruned["kept"] == len(infos) - len(pruned["deleted"])
    assert client.get(f"/v1/plans/{plan_id}/checkpoints").json()[0] == infos[0]
    assert client.post(f"/v1/plans/{plan_id}/checkpoints/prune", json={"keep_last": 0}).status_code == 422
    # A damaged file: verify names it, show refuses it with the typed error, nothing is changed.
    path = server.cwd / ".vibe_checkpoints" / plan_id / f"{infos[0]['checkpoint_id']}.json"
    path.write_bytes(path.read_bytes()[:-40])
    report = client.get("/v1/checkpoints/verify", params={"plan_id": plan_id}).json()
    assert report["ok"] is False and report["problems"][0]["file"] == f"{plan_id}/{path.name}"
    answer = client.get(f"/v1/checkpoints/{infos[0]['checkpoint_id']}")
    assert answer.status_code == 409 and answer.json()["error"]["type"] == "CheckpointCorruptError"
    assert client.delete(f"/v1/checkpoints/{infos[0]['checkpoint_id']}").status_code == 204
    assert client.get(f"/v1/checkpoints/{infos[0]['checkpoint_id']}").status_code == 404
    assert client.delete(f"/v1/plans/{plan_id}").status_code == 204
    assert client.get(f"/v1/plans/{plan_id}").status_code == 404


def test_a_plan_of_another_vibe_is_a_409(client: httpx.Client) -> None:
    plan_id = submit(client, "first vibe", plan_id="shared-id")
    stream(client, plan_id)
    answer = client.post("/v1/plans", json={"vibe": "second vibe", "plan_id": "shared-id"})
    assert answer.status_code == 409 and answer.json()["error"]["type"] == "CheckpointMismatchError"
    assert submit(client, "second vibe", plan_id="shared-id", fresh=True) == "shared-id"
    assert stream(client, plan_id)[-1]["data"]["status"] == "completed"


def test_a_client_that_leaves_mid_stream_costs_nothing(client: httpx.Client) -> None:
    plan_id = submit(client, "leave early")
    with client.stream("GET", f"/v1/plans/{plan_id}/events") as response:
        first = next(sse_events(response))
    assert first["event"] == "plan_created"
    while client.get("/v1/health").json()["streams"] != 0:  # the server notices the client left
        pass
    assert stream(client, plan_id)[-1]["data"]["status"] == "completed"


def test_the_openapi_schema_is_served(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/v1/plans"])
    for path in ["/v1/plans/{plan_id}", "/v1/plans/{plan_id}/events", "/v1/plans/{plan_id}/cancel",
                 "/v1/plans/{plan_id}/resume", "/v1/checkpoints/verify", "/v1/checkpoints/usage",
                 "/v1/checkpoints/{checkpoint_id}", "/v1/plans/{plan_id}/checkpoints/prune"]:
        assert path in paths, path
    assert "text/event-stream" in paths["/v1/plans/{plan_id}/events"]["get"]["responses"]["200"]["content"]
    assert {"ErrorBody", "PlanDetail", "SubmitRequest"} <= set(schema["components"]["schemas"])


def test_the_server_refuses_to_start_open_unless_on_loopback_with_no_auth(tmp_path: Path) -> None:
    import subprocess

    from tests.server_process import SCRIPT
    env = {"PATH": str(SCRIPT.parent), "HOME": str(tmp_path)}
    for args, message in [([], "no API token"), (["--no-auth", "--host", "0.0.0.0"], "loopback")]:
        done = subprocess.run([str(SCRIPT), "serve", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
