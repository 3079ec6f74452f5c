// The vibe-planner dashboard: plans, a plan's DAG coloured live from its event stream, its
// checkpoints. Talks only to the /v1 API, with the token kept in this tab's sessionStorage
// (events are read with fetch, not EventSource, so the token goes in a header, never a URL).
"use strict";

const COLOURS = {
  pending: "#c9c6bf", queued: "#c9c6bf", running: "#2f7df6", retrying: "#e8a33d",
  waiting: "#9b59d0", completed: "#2e9e5b", failed: "#d64541", skipped: "#8d8a84",
  cancelled: "#55534f",
};
const NODE_STATUS = {
  node_started: "running", node_retrying: "retrying", node_completed: "completed",
  node_failed: "failed", node_skipped: "skipped", waiting: "waiting",
};
const FINAL = new Set(["completed", "failed", "skipped"]);

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("vp-token") || "", plan: null, cy: null,
                stream: null, lastEventId: null, nodes: {} };
window.vibePlanner = state;  // for the browser test and for curious people

if (location.hash.startsWith("#token=")) {  // a fragment never reaches the server or its logs
  state.token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem("vp-token", state.token);
  history.replaceState(null, "", location.pathname);
}

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, { method, headers,
                                     body: body === undefined ? undefined : JSON.stringify(body) });
  if (answer.status === 401) { showLogin(); throw new ApiError("sign in first"); }
  const data = answer.status === 204 ? null : await answer.json();
  if (!answer.ok) throw new ApiError(data && data.error ? data.error.message : answer.statusText);
  return data;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function badge(status) { return el("span", { className: "badge " + status, textContent: status }); }

// -- sign-in --------------------------------------------------------------------------------
function showLogin() { $("login").hidden = false; $("app").hidden = true; }

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("vp-token", state.token);
  $("login-error").textContent = "";
  try { await start(); } catch (error) { $("login-error").textContent = error.message; }
});

// -- plans ----------------------------------------------------------------------------------
async function refreshPlans() {
  const page = await api("GET", "/v1/plans?limit=200");
  const body = $("plans").tBodies[0];
  body.replaceChildren(...page.plans.map((plan) => {
    const row = el("tr", {}, el("td", { className: "mono", textContent: plan.plan_id, title: plan.description }),
                   el("td", { className: "status" }, badge(plan.status)),
                   el("td", { textContent: `${plan.progress.completed}/${plan.progress.total}` }));
    row.dataset.planId = plan.plan_id;
    if (state.plan === plan.plan_id) row.classList.add("selected");
    row.addEventListener("click", () => select(plan.plan_id));
    return row;
  }));
  const health = await api("GET", "/v1/health");
  $("server-status").textContent = `${health.status} · ${health.running} running · ${page.total} plans`;
}

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("submit-error").textContent = "";
  const constraints = $("constraints").value.split(";").map((c) => c.trim()).filter(Boolean);
  const vibe = { description: $("vibe").value, constraints };
  if ($("style").value.trim()) vibe.style = $("style").value.trim();
  try {
    const accepted = await api("POST", "/v1/plans", { vibe });
    await select(accepted.plan_id);
    await refreshPlans();
  } catch (error) { $("submit-error").textContent = error.message; }
});

// -- one plan -------------------------------------------------------------------------------
async function select(planId) {
  if (state.stream) state.stream.abort();
  state.plan = planId;
  state.cy = null;
  state.nodes = {};
  $("events").replaceChildren();
  $("placeholder").hidden = true;
  $("plan-view").hidden = false;
  history.replaceState(null, "", "#plan=" + encodeURIComponent(planId));
  const detail = await refreshDetail();
  follow(planId, detail.last_event_id);
  for (const row of $("plans").tBodies[0].rows) row.classList.toggle("selected", row.dataset.planId === planId);
}

async function refreshDetail() {
  const planId = state.plan;
  const detail = await api("GET", "/v1/plans/" + encodeURIComponent(planId));
  if (planId !== state.plan) return detail;
  $("plan-title").textContent = planId;
  showStatus(detail.status);
  $("plan-vibe").textContent = detail.vibe.description || "";
  if (detail.nodes) drawGraph(detail.nodes);
  showRequests(detail.pending_requests || []);
  await refreshCheckpoints();
  return detail;
}

function showStatus(status) {
  const node = $("plan-status");
  node.className = "badge " + status;
  node.textContent = status;
  const active = status === "running" || status === "queued";
  $("cancel-button").disabled = !active;
  $("resume-button").disabled = active || status === "completed";
}

function drawGraph(nodes) {
  const same = state.cy && nodes.length === state.cy.nodes().length
    && nodes.every((n) => state.cy.getElementById(n.id).nonempty());
  if (!same) {
    const elements = [];
    for (const node of nodes) {
      elements.push({ data: { id: node.id, label: node.id, status: node.status, kind: node.kind } });
      for (const dep of node.depends_on) elements.push({ data: { id: `${dep}->${node.id}`, source: dep, target: node.id } });
    }
    state.cy = cytoscape({
      container: $("graph"), elements, wheelSensitivity: 0.3,
      layout: { name: "preset", positions: layered(nodes), fit: true, padding: 30 },
      style: [
        { selector: "node", style: { "background-color": (n) => COLOURS[n.data("status")] || COLOURS.pending,
                                     label: "data(label)", color: "#1d1d1f", "font-size": 11,
                                     "text-valign": "bottom", "text-margin-y": 4, width: 26, height: 26 } },
        { selector: "edge", style: { width: 1.5, "line-color": "#bdb9b1", "target-arrow-color": "#bdb9b1",
                                     "target-arrow-shape": "triangle", "curve-style": "bezier" } },
      ],
    });
    state.nodes = {};
  }
  for (const node of nodes) setNodeStatus(node.id, node.status, node.kind, true);
}

// Each node one column right of its deepest dependency (the longest path), spread in its column.
function layered(nodes) {
  const level = {};
  const depth = (node) => {
    if (level[node.id] === undefined) {
      level[node.id] = 0;  // a cycle cannot happen (plans are DAGs); this only guards the recursion
      level[node.id] = Math.max(-1, ...node.depends_on.map((d) => byId[d] ? depth(byId[d]) : -1)) + 1;
    }
    return level[node.id];
  };
  const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
  const rows = [];
  for (const node of nodes) (rows[depth(node)] ||= []).push(node.id);
  const positions = {};
  rows.forEach((row, x) => row.forEach((id, y) => {  // left to right, as the work flows
    positions[id] = { x: x * 150, y: (y - (row.length - 1) / 2) * 70 };
  }));
  return positions;
}

function setNodeStatus(nodeId, status, kind, fromDetail = false) {
  const known = state.nodes[nodeId];
  if (!fromDetail && known && FINAL.has(known.status)) return;  // a later event cannot undo an end
  state.nodes[nodeId] = { status, kind: kind || (known && known.kind) || "" };
  if (state.cy) state.cy.getElementById(nodeId).data("status", status);
  const body = $("nodes").tBodies[0];
  let row = body.querySelector(`tr[data-node-id="${CSS.escape(nodeId)}"]`);
  if (!row) {
    row = el("tr", {}, el("td", { className: "mono", textContent: nodeId }), el("td"), el("td", { className: "status" }));
    row.dataset.nodeId = nodeId;
    body.append(row);
  }
  row.cells[1].textContent = state.nodes[nodeId].kind;
  row.cells[2].replaceChildren(badge(status));
  row.dataset.status = status;
}

async function refreshCheckpoints() {
  const infos = await api("GET", `/v1/plans/${encodeURIComponent(state.plan)}/checkpoints`);
  $("checkpoints").tBodies[0].replaceChildren(...infos.map((info) => el("tr", {},
    el("td", { className: "mono", textContent: info.checkpoint_id }),
    el("td", { textContent: info.error ? "damaged: " + info.error : info.reason }),
    el("td", { textContent: `${info.completed_nodes}/${info.total_nodes}` }),
    el("td", { textContent: (info.size_bytes / 1024).toFixed(1) + " KiB" }),
    el("td", { textContent: info.created_at ? new Date(info.created_at).toLocaleTimeString() : "-" }))));
}

// -- live events ----------------------------------------------------------------------------
async function follow(planId, lastEventId) {
  const controller = new AbortController();
  state.stream = controller;
  state.ended = false;
  state.lastEventId = lastEventId;
  while (!controller.signal.aborted) {
    let ended = false;
    try {
      const headers = { Accept: "text/event-stream" };
      if (state.token) headers.Authorization = "Bearer " + state.token;
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const answer = await fetch(`/v1/plans/${encodeURIComponent(planId)}/events`,
                                 { headers, signal: controller.signal });
      if (!answer.ok) return;
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          if (event.id) state.lastEventId = event.id;
          ended = ended || event.event === "plan_ended" || event.event === "plan_status";
          if (planId === state.plan) await onEvent(event);
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    if (ended) { state.ended = true; return; }  // the stream ends with the run
    await new Promise((resolve) => setTimeout(resolve, 1000));  // reconnect, missing nothing
  }
}

function parseFrame(frame) {
  const event = {};
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    event[name] = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
  }
  if (event.data === undefined) return null;
  event.data = JSON.parse(event.data);
  return event;
}

async function onEvent(event) {
  const data = event.data;
  const line = el("li", { textContent: `${event.event}${data.node_id ? " " + data.node_id : ""}` +
                                       `${data.status ? " " + data.status : ""}` });
  $("events").prepend(line);
  while ($("events").childElementCount > 500) $("events").lastElementChild.remove();
  const status = NODE_STATUS[event.event];
  if (status && data.node_id) setNodeStatus(data.node_id, status);
  if ("total" in data && data.total) showStatus(`running`);
  if (["checkpoint_written", "plan_ended", "plan_status", "waiting", "answered"].includes(event.event)) {
    await refreshDetail();
    refreshPlans();
  }
}

// -- actions --------------------------------------------------------------------------------
async function act(action) {
  $("action-error").textContent = "";
  try {
    await api("POST", `/v1/plans/${encodeURIComponent(state.plan)}/${action}`);
    if (action === "resume") follow(state.plan, state.lastEventId);
    await refreshDetail();
    await refreshPlans();
  } catch (error) { $("action-error").textContent = error.message; }
}
$("cancel-button").addEventListener("click", () => act("cancel"));
$("resume-button").addEventListener("click", () => act("resume"));

// A pending request: an approval gets Approve / Reject (and a comment); any other question a
// JSON answer, checked by the server against the request's schema.
function showRequests(requests) {
  $("requests").hidden = requests.length === 0;
  $("request-list").replaceChildren(...requests.map((request) => {
    const node = state.nodes[request.node_id];
    const schema = request.json_schema || {};
    const approval = (schema.properties && schema.properties.approved) || (node && node.kind === "approval");
    const box = el("form", { className: "request" },
      el("div", {}, el("strong", { textContent: request.node_id }), " asks: ", request.prompt),
      el("div", { className: "muted mono", textContent: request.id }));
    box.dataset.requestId = request.id;
    const error = el("span", { className: "error" });
    const send = async (value) => {
      error.textContent = "";
      try {
        await api("POST", `/v1/plans/${encodeURIComponent(state.plan)}/responses`,
                  { request_id: request.id, value });
        if (!state.stream || state.stream.signal.aborted || state.ended) follow(state.plan, state.lastEventId);
        await refreshDetail();
      } catch (problem) { error.textContent = problem.message; }
    };
    if (approval) {
      const comment = el("input", { placeholder: "comment (optional)", name: "comment" });
      const answer = (approved) => (comment.value.trim() ? { approved, comment: comment.value.trim() } : { approved });
      box.append(comment,
        el("button", { type: "button", className: "approve", textContent: "Approve", onclick: () => send(answer(true)) }),
        " ",
        el("button", { type: "button", className: "reject", textContent: "Reject", onclick: () => send(answer(false)) }));
    } else {
      const text = el("textarea", { rows: 2, placeholder: "the answer, as JSON", name: "value" });
      box.append(text, el("button", { type: "button", textContent: "Send", onclick: () => {
        let value;
        try { value = JSON.parse(text.value); } catch (problem) { error.textContent = "not JSON: " + problem.message; return; }
        send(value);
      } }));
    }
    box.append(error);
    box.addEventListener("submit", (event) => event.preventDefault());
    return box;
  }));
}

// -- start ----------------------------------------------------------------------------------
async function start() {
  await refreshPlans();
  $("login").hidden = true;
  $("app").hidden = false;
  const wanted = location.hash.startsWith("#plan=") ? decodeURIComponent(location.hash.slice(6)) : null;
  if (wanted) await select(wanted);
}

start().catch(() => {});
setInterval(() => { if (!$("app").hidden) refreshPlans().catch(() => {}); }, 2000);
