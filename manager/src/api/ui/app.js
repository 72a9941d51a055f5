// The cfm dashboard: the fleet at a glance, participants found by predicate, and each
// participant's orchestrations drawn as graphs. It only calls the same-origin REST API
// with the token a person pasted, so it sees what that token may see and nothing more.
// Text from the API is always set as text, never parsed as markup.

const API = "/api/v1alpha1";
const TOKEN_KEY = "cfm-token";
const POLL_MS = 2000;
const STATES = ["pending", "active", "disposing", "error", "disposed"];
const COLOURS = {
  completed: "#2e7d32",
  failed: "#c62828",
  dispatched: "#e0a000",
  pending: "#9aa5ad",
  cancelled: "#5f6b73",
};
const ORCHESTRATION_STATES = { 0: "initialized", 1: "running", 2: "completed", 3: "errored" };

let timer = null;
// Each route() is a generation; a view that finishes after a newer one started is dropped,
// so a slow answer never draws over the page the address now names.
let generation = 0;

// --- routing ---------------------------------------------------------------------------

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
  route();
});

/** Shows the view the location's hash names: `#/`, `#/participants?q=...`,
 *  `#/participant/<tenant>/<id>?o=<orchestration>&calls=denied`. A `token=` parameter (a link an
 *  operator's script opened) is kept for the tab and taken out of the address. */
function route() {
  clearTimeout(timer);
  const mine = ++generation;
  const [path, query] = splitHash();
  if (query.has("token")) {
    // Only into a tab that holds no token: a link cannot swap the person's identity.
    if (!sessionStorage.getItem(TOKEN_KEY)) sessionStorage.setItem(TOKEN_KEY, query.get("token"));
    query.delete("token");
    const rest = query.toString();
    history.replaceState(null, "", "#" + path + (rest ? "?" + rest : ""));
  }
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    return signIn();
  }
  document.getElementById("signout").hidden = false;
  const parts = path.split("/").filter(Boolean);
  const view =
    parts[0] === "participant" && parts.length === 3
      ? participantView(parts[1], parts[2], query.get("o"), query.get("calls") === "denied")
      : parts[0] === "participants"
        ? participantsView(query.get("q") || "")
        : parts[0] === "tenants"
          ? tenantsView(query.get("q") || "")
          : fleetView();
  view
    .then(({ node, refreshMs }) => {
      if (mine !== generation) return;
      document.getElementById("main").replaceChildren(node);
      if (refreshMs) timer = setTimeout(route, refreshMs);
    })
    .catch((e) => {
      if (mine === generation) showError(e);
    });
}

function splitHash() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const at = hash.indexOf("?");
  return at < 0 ? [hash, new URLSearchParams()] : [hash.slice(0, at), new URLSearchParams(hash.slice(at + 1))];
}

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** One API call: its JSON and the `X-Total-Count` it sent (null when it sent none). */
async function api(path, body) {
  const init = { headers: { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  const data = await response.json().catch(() => null);
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn("The token was refused: " + ((data && data.message) || "unauthorized"));
    throw new ApiError(401, "signed out");
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.message) || response.statusText);
  }
  const total = response.headers.get("X-Total-Count");
  return { data, total: total === null ? null : Number(total) };
}

/** How many a predicate matches: `1000+` past what the API counts. */
async function count(path, predicate) {
  const { data, total } = await api(path, { predicate, limit: 1 });
  if (total !== null) return String(total);
  return data.length === 0 ? "0" : "1000+";
}

/** The answer of a call this token may not make, as null instead of an error. */
async function permitted(promise) {
  try {
    return await promise;
  } catch (e) {
    if (e.status === 403) return null;
    throw e;
  }
}

// --- views -----------------------------------------------------------------------------

async function fleetView() {
  const main = page("Fleet");
  const cards = el("div", { class: "cards" });
  main.append(el("h2", {}, "Participants"), cards);
  const counts = await Promise.all(
    STATES.map((state) => count("/participant-profiles/query", `vpas.state = '${state}'`)),
  );
  STATES.forEach((state, i) => cards.append(card(state, counts[i], "participants-" + state)));

  const running = await permitted(api("/orchestrations/query", { predicate: "state = 1", limit: 200 }));
  const orchestrationCards = el("div", { class: "cards" });
  main.append(el("h2", {}, "Orchestrations"), orchestrationCards);
  if (running === null) {
    orchestrationCards.append(el("p", { class: "muted" }, "This token may not read orchestrations."));
  } else {
    const errored = await count("/orchestrations/query", "state = 3");
    const retrying = running.data.filter((o) =>
      o.steps.some((s) => s.state === "dispatched" && s.attempts > 1),
    ).length;
    orchestrationCards.append(
      card("running", running.total ?? running.data.length, "orchestrations-running"),
      card("retrying", retrying, "orchestrations-retrying"),
      card("failed", errored, "orchestrations-errored"),
    );
  }

  const cells = await api("/cells?limit=1000");
  main.append(el("h2", {}, "Cells"));
  main.append(
    table(
      ["Cell", "State", "Participants", "Capacity", "Use", "Labels"],
      cells.data.map((cell) => {
        const max = cell.capacity && cell.capacity.maxParticipants;
        const used = cell.usage ? cell.usage.participants : 0;
        const row = tr([
          cell.externalId || cell.id,
          stateSpan(cell.state),
          String(used),
          max ? String(max) : "—",
          max ? useBar(used / max) : "",
          Object.entries(cell.labels || {}).map(([k, v]) => `${k}=${v}`).join(", "),
        ]);
        row.dataset.cell = cell.externalId || cell.id;
        row.dataset.participants = String(used);
        return row;
      }),
    ),
  );

  const rollouts = await permitted(api("/rollouts?limit=10"));
  if (rollouts !== null && rollouts.data.length > 0) {
    main.append(el("h2", {}, "Rollouts"));
    main.append(
      table(
        ["Rollout", "Template", "State", "Upgraded", "Failed", "Pending"],
        rollouts.data.map((r) =>
          tr([
            mono(r.id),
            `${r.templateId} → v${r.targetVersion}`,
            stateSpan(r.state),
            String((r.progress || {}).upgraded ?? ""),
            String((r.progress || {}).failed ?? ""),
            String((r.progress || {}).pending ?? ""),
          ]),
        ),
      ),
    );
  }
  return { node: main, refreshMs: POLL_MS * 5 };
}

async function participantsView(predicate) {
  const example = "identifier LIKE '%acme%' AND vpas.state = 'error'";
  const { main, found } = await searchPage("Participants", "participants", predicate, example, "/participant-profiles/query");
  main.append(
    table(
      ["Identifier", "Participant", "Tenant", "State", "Template"],
      found.data.map((p) => {
        const row = tr([
          link(`#/participant/${p.tenantId}/${p.id}`, p.identifier),
          mono(p.id),
          mono(p.tenantId),
          stateSpan(participantState(p)),
          p.templateId ? `${p.templateId} v${p.templateVersion}` : "",
        ]);
        row.dataset.participant = p.id;
        return row;
      }),
    ),
  );
  return { node: main };
}

async function participantView(tenant, id, selected, deniedOnly) {
  const base = `/tenants/${encodeURIComponent(tenant)}/participant-profiles/${encodeURIComponent(id)}`;
  const callsPath = base + "/capability-calls?limit=50" + (deniedOnly ? "&decision=denied" : "");
  const [profile, history, calls] = await Promise.all([
    api(base),
    api(base + "/history?limit=50"),
    api(callsPath),
  ]);
  const p = profile.data;
  const main = page(p.identifier);
  const here = (params) => {
    const query = new URLSearchParams(params);
    return `#/participant/${tenant}/${id}` + (query.toString() ? "?" + query : "");
  };
  const kept = selected ? { o: selected } : {};
  // The capability calls close the page, whatever of the graph this token may see.
  const done = (refreshMs) => {
    const toggle = deniedOnly ? here(kept) : here({ ...kept, calls: "denied" });
    main.append(...capabilityCalls(calls, deniedOnly, toggle));
    return { node: main, refreshMs };
  };
  main.append(
    facts([
      ["Participant", mono(p.id)],
      ["Tenant", mono(p.tenantId)],
      ["State", stateSpan(participantState(p))],
      ["Cell", mono((p.vpas[0] || {}).cellId || "")],
      ["Template", p.templateId ? `${p.templateId} v${p.templateVersion}` : "—"],
      ["Migration", p.migration ? `${p.migration.state}: ${p.migration.sourceCellId} → ${p.migration.targetCellId}` : "—"],
      ["Drift", p.drift ? stateSpan(p.drift.state) : "not verified"],
      ["Error", p.errorDetail ? el("span", { class: "error" }, p.errorDetail) : "—"],
    ]),
  );
  const entries = history.data;
  const chosen = selected || (entries[0] && entries[0].orchestrationId);
  main.append(el("h2", {}, "Orchestrations"));
  main.append(
    table(
      ["Type", "State", "Started", "Definition", "Error"],
      entries.map((e) => {
        const row = tr([
          link(`#/participant/${tenant}/${id}?o=${e.orchestrationId}`, shortType(e.orchestrationType)),
          stateSpan(ORCHESTRATION_STATES[e.state] || String(e.state)),
          e.createdTimestamp,
          `${e.definitionId} v${e.definitionVersion}`,
          e.errorDetail ? el("span", { class: "error" }, e.errorDetail) : "",
        ]);
        if (e.orchestrationId === chosen) row.className = "selected";
        return row;
      }),
    ),
  );
  if (!chosen) return done(null);
  const orchestration = await permitted(api(`/orchestrations/${encodeURIComponent(chosen)}`));
  main.append(el("h2", {}, "Graph"));
  if (orchestration === null) {
    main.append(el("p", { class: "muted" }, "This token may not read orchestrations' steps."));
    return done(null);
  }
  const o = orchestration.data;
  main.append(el("div", { class: "graph" }, graph(o.steps)));
  const failures = o.steps.filter((s) => s.lastError);
  if (failures.length > 0) {
    const list = el("ul", { class: "errors" });
    failures.forEach((s) => {
      const item = el("li", { class: "error" }, `${s.id} (${s.type}, attempt ${s.attempts}): ${s.lastError}`);
      item.dataset.step = s.id;
      list.append(item);
    });
    main.append(el("h2", {}, "Errors"), list);
  }
  // Live while it runs.
  return done(o.state === 0 || o.state === 1 ? POLL_MS : null);
}

/** The participant's capability calls, newest first, refusals highlighted; `toggle` links
 *  to the other listing (denials only, or every call). */
function capabilityCalls(calls, deniedOnly, toggle) {
  const heading = el("h2", {}, "Capability calls");
  const total = calls.total ?? calls.data.length;
  const summary = el(
    "p",
    { class: "muted" },
    `${total} ${deniedOnly ? "denied" : "recorded"}; showing ${calls.data.length}. `,
    link(toggle, deniedOnly ? "Show every call" : "Show denials only"),
  );
  if (calls.data.length === 0) {
    const none = deniedOnly
      ? "No call of this participant's plugins was denied."
      : "No call recorded: writes, refusals and outbound requests are; reads of secrets, cluster objects and DNS are not.";
    return [heading, summary, el("p", { class: "muted" }, none)];
  }
  const rows = calls.data.map((c) => {
    const denied = c.decision === "denied";
    const result = denied
      ? el("span", { class: "error" }, "denied")
      : (c.effect || "allowed") + (c.dryRun ? " (dry run)" : "");
    const row = tr([
      c.at,
      c.plugin,
      `${c.capability} ${c.operation}`,
      mono(c.target),
      result,
      `${c.activityId} #${c.attempt}`,
    ]);
    row.className = denied ? "call denied" : "call";
    row.dataset.decision = c.decision;
    row.dataset.capability = c.capability;
    return row;
  });
  return [heading, summary, table(["Time", "Plugin", "Call", "Target", "Result", "Activity"], rows)];
}

async function tenantsView(predicate) {
  const example = "properties.name LIKE 'Acme%'";
  const { main, found } = await searchPage("Tenants", "tenants", predicate, example, "/tenants/query");
  main.append(
    table(
      ["Name", "Tenant", "Participants"],
      found.data.map((t) => {
        const row = tr([
          (t.properties || {}).name || "—",
          mono(t.id),
          link("#/participants?q=" + encodeURIComponent(`tenantId = '${t.id}'`), "participants"),
        ]);
        row.dataset.tenant = t.id;
        return row;
      }),
    ),
  );
  return { node: main };
}

/** A page with a predicate search box (sending the person to `#/<view>?q=...`) and what
 *  the `/query` route at `path` found for `predicate`, 200 at most. */
async function searchPage(title, view, predicate, example, path) {
  const main = page(title);
  const input = el("input", { type: "text", placeholder: example });
  input.value = predicate;
  const form = el("form", { class: "search" }, input, el("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/${view}?q=` + encodeURIComponent(input.value);
  });
  main.append(form);
  const found = await api(path, { predicate: predicate || "true", limit: 200 });
  main.append(
    el("p", { class: "muted" }, `${found.total ?? found.data.length + "+"} found; showing ${found.data.length}.`),
  );
  return { main, found };
}

// --- the graph -------------------------------------------------------------------------

const NODE_W = 190;
const NODE_H = 66;
const GAP_X = 70;
const GAP_Y = 24;

/** An orchestration's steps as an SVG: one column per stage (a step's stage is one past
 *  its deepest dependency's), each step a box coloured by its state, an edge per
 *  dependency. */
function graph(steps) {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const depth = new Map();
  const stageOf = (step, seen = new Set()) => {
    if (depth.has(step.id)) return depth.get(step.id);
    if (seen.has(step.id)) return 0;
    seen.add(step.id);
    const d = Math.max(-1, ...step.dependsOn.filter((d) => byId.has(d)).map((d) => stageOf(byId.get(d), seen))) + 1;
    depth.set(step.id, d);
    return d;
  };
  const columns = [];
  steps.forEach((s) => (columns[stageOf(s)] ||= []).push(s));
  const position = new Map();
  columns.forEach((column, x) =>
    column.forEach((s, y) => position.set(s.id, { x: 20 + x * (NODE_W + GAP_X), y: 20 + y * (NODE_H + GAP_Y) })),
  );
  const width = 40 + columns.length * (NODE_W + GAP_X) - GAP_X;
  const height = 40 + Math.max(1, ...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  svg.append(
    svgEl(
      "defs",
      {},
      svgEl(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
        svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa5ad" }),
      ),
    ),
  );
  for (const s of steps) {
    for (const dep of s.dependsOn.filter((d) => position.has(d))) {
      const from = position.get(dep);
      const to = position.get(s.id);
      const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
      svg.append(
        svgEl("path", {
          d: `M${x1},${y1} C${x1 + GAP_X / 2},${y1} ${x2 - GAP_X / 2},${y2} ${x2},${y2}`,
          fill: "none",
          stroke: "#9aa5ad",
          "stroke-width": 1.5,
          "marker-end": "url(#arrow)",
        }),
      );
    }
  }
  for (const s of steps) {
    const { x, y } = position.get(s.id);
    const colour = COLOURS[s.state] || COLOURS.pending;
    const node = svgEl("g", { class: "step", "data-step": s.id, "data-state": s.state, transform: `translate(${x},${y})` });
    node.append(
      svgEl("title", {}, s.lastError ? `${s.id}: ${s.lastError}` : `${s.id}: ${s.state}`),
      svgEl("rect", { width: NODE_W, height: NODE_H, rx: 6, fill: colour, "fill-opacity": 0.14, stroke: colour, "stroke-width": 2 }),
      svgEl("text", { x: 10, y: 20, "font-weight": "bold", "font-size": 13, fill: "#1d2327" }, clip(s.id, 24)),
      svgEl("text", { x: 10, y: 38, "font-size": 11, fill: "#6b7780" }, clip(s.type, 30)),
      svgEl("text", { x: 10, y: 56, "font-size": 11, fill: colour, class: "step-state" }, stepLine(s)),
    );
    svg.append(node);
  }
  return svg;
}

function stepLine(s) {
  const parts = [s.state];
  if (s.attempts > 0) parts.push(s.attempts === 1 ? "1 attempt" : `${s.attempts} attempts`);
  if (s.startedTimestamp && s.completedTimestamp) {
    const ms = Date.parse(s.completedTimestamp) - Date.parse(s.startedTimestamp);
    parts.push(ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);
  }
  return parts.join(" · ");
}

// --- pieces ----------------------------------------------------------------------------

function signIn(message) {
  clearTimeout(timer);
  document.getElementById("signout").hidden = true;
  const main = document.getElementById("main");
  main.replaceChildren(document.getElementById("signin").content.cloneNode(true));
  if (message) document.getElementById("signin-error").textContent = message;
  document.getElementById("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    route();
  });
}

function showError(e) {
  if (e.status === 401) return;
  const message = `${e.status ? e.status + ": " : ""}${e.message}`;
  document.getElementById("main").replaceChildren(el("p", { class: "error" }, message));
}

/** A view's content, built apart from the page and swapped in whole when ready. */
function page(title) {
  return el("div", {}, el("h1", {}, title));
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function svgEl(tag, attributes, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}

function card(label, value, key) {
  const valueNode = el("div", { class: "value" }, String(value));
  valueNode.dataset.count = key;
  return el("div", { class: "card " + label }, valueNode, el("div", { class: "label" }, label));
}

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map((h) => el("th", {}, h)));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function tr(cells) {
  return el("tr", {}, ...cells.map((c) => el("td", {}, c)));
}

function facts(pairs) {
  const list = el("dl", { class: "facts" });
  pairs.forEach(([k, v]) => list.append(el("dt", {}, k), el("dd", {}, v)));
  return list;
}

function link(href, text) {
  return el("a", { href }, text);
}

function mono(text) {
  return el("span", { class: "mono" }, text);
}

function stateSpan(state) {
  return el("span", { class: "state " + String(state).split(" ")[0] }, state);
}

function useBar(fraction) {
  const fill = el("span", {});
  fill.style.width = Math.min(100, Math.round(fraction * 100)) + "%";
  return el("span", { class: fraction >= 1 ? "bar full" : "bar", title: Math.round(fraction * 100) + "%" }, fill);
}

function participantState(p) {
  const state = (p.vpas[0] || {}).state || "unknown";
  return p.error && state !== "error" ? `${state} (error)` : state;
}

function shortType(t) {
  return t.replace(/^cfm\.orchestration\.(vpa\.)?/, "");
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}
