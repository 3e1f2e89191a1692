// zone-egress status page: reads this node's JSON API and /metrics every 2 s and fills the
// tables. Every value is set with textContent (never as markup). With a read token, the token
// is asked for on the first 401 and kept in sessionStorage (this tab only).
"use strict";

const REFRESH_MS = 2000;
let previous = null; // {at: ms, counters: Map} of the last refresh, for per-second rates

function token() { return sessionStorage.getItem("zone-egress-token"); }

async function fetchJson(path) {
  const headers = {};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw { unauthorized: true };
  if (path === "/ready") return r.json(); // 503 carries the reasons
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

async function fetchText(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.text();
}

// Prometheus text → [{name, labels: {..}, value}] (enough of the format for our own families).
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\"/g, '"').replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
      }
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function sum(samples, name, match) {
  let total = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (match && !Object.entries(match).every(([k, v]) => s.labels[k] === v)) continue;
    total += s.value;
  }
  return total;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function badge(text, kind) { return el("span", text, "badge s-" + kind); }

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    let td;
    if (c instanceof Node) { td = el("td"); td.appendChild(c); }
    else if (c && typeof c === "object" && "node" in c) { td = el("td", null, c.cls); td.appendChild(c.node); }
    else if (c && typeof c === "object") { td = el("td", c.text, c.cls); }
    else { td = el("td", c); }
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows, emptyText) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const cols = document.querySelectorAll("#" + id + " thead th").length || 2;
    const td = el("td", emptyText, "empty");
    td.colSpan = cols;
    const tr = document.createElement("tr");
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const r of rows) body.appendChild(r);
}

function num(n) { return { text: Math.round(n).toLocaleString("en"), cls: "num" }; }
function rate(n) { return { text: n === null ? "–" : n.toFixed(n < 10 ? 1 : 0), cls: "num" }; }
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return { text: (i === 0 ? n : n.toFixed(1)) + " " + units[i], cls: "num" };
}
function age(ms) {
  if (ms === undefined || ms === null) return "–";
  let s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.floor(s / 60) + "m";
  if (s < 172800) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

const STATE_KIND = { alive: "ok", draining: "warn", dead: "bad", left: "muted" };

// Per-second rate of a counter since the last refresh (null on the first one).
function perSecond(key, value, now, counters) {
  counters.set(key, value);
  if (!previous || !previous.counters.has(key)) return null;
  const dt = (now - previous.at) / 1000;
  return dt > 0 ? Math.max(0, value - previous.counters.get(key)) / dt : null;
}

async function refresh() {
  const [ready, status, members, meshes, links, metricsText] = await Promise.all([
    fetchJson("/ready"), fetchJson("/v1/status"), fetchJson("/v1/members"),
    fetchJson("/v1/meshes"), fetchJson("/v1/links"), fetchText("/metrics"),
  ]);
  const perMesh = await Promise.all(meshes.map(async (m) => {
    const name = encodeURIComponent(m.name);
    const [es, mes] = await Promise.all([
      fetchJson("/v1/meshes/" + name + "/external-services"),
      fetchJson("/v1/meshes/" + name + "/meshexternalservices"),
    ]);
    return { mesh: m.name, es, mes };
  }));
  const samples = parseMetrics(metricsText);
  const now = Date.now();
  const counters = new Map();

  document.getElementById("zone").textContent = status.zone;
  document.getElementById("node").textContent = status.name;
  document.getElementById("node-name").textContent = status.name;
  document.getElementById("version").textContent = "v" + status.version + (status.commit && status.commit !== "unknown" ? " (" + status.commit.slice(0, 12) + ")" : "");
  document.getElementById("uptime").textContent = age(now - status.uptimeSeconds * 1000);
  document.getElementById("updated").textContent = new Date(now).toLocaleTimeString();

  // Members.
  const byState = {};
  for (const m of members) byState[m.state] = (byState[m.state] || 0) + 1;
  const notReady = members.filter((m) => (m.state === "alive" || m.state === "draining") && !m.ready);
  members.sort((a, b) => a.name.localeCompare(b.name) || b.generation - a.generation);
  fill("members", members.map((m) => {
    const readyCell = document.createElement("div");
    if (m.state === "alive" || m.state === "draining") {
      readyCell.appendChild(badge(m.ready ? "ready" : "not ready", m.ready ? "ok" : "bad"));
      for (const r of m.readyReasons || []) readyCell.appendChild(el("div", r, "reason"));
    } else {
      readyCell.appendChild(el("span", "–", "reason"));
    }
    if (m.nameConflict) readyCell.appendChild(el("div", "name held by another node", "reason"));
    const tr = row([
      { text: m.name, cls: m.name === status.name ? "self" : "" },
      m.role || "?",
      badge(m.state, STATE_KIND[m.state] || "muted"),
      readyCell,
      m.version || "–",
      { text: age(m.startedAtMs), cls: "num" },
      m.gossipAddress,
      m.adminAddress || "–",
    ]);
    tr.dataset.member = m.name;
    tr.dataset.state = m.state;
    return tr;
  }), "no members");
  document.getElementById("members-count").textContent =
    "(" + Object.entries(byState).map(([s, n]) => n + " " + s).join(", ") + ")";

  // This node's counters.
  const accepted = sum(samples, "zone_egress_connections_total");
  const routed = sum(samples, "zone_egress_connections_routed_total");
  const rejected = sum(samples, "zone_egress_connections_rejected_total");
  const active = sum(samples, "zone_egress_connections_active");
  const rows = [
    ["connections accepted", num(accepted), rate(perSecond("accepted", accepted, now, counters))],
    ["connections routed", num(routed), rate(perSecond("routed", routed, now, counters))],
    ["connections refused", num(rejected), rate(perSecond("rejected", rejected, now, counters))],
    ["connections active", num(active), ""],
    ["handshake failures", num(sum(samples, "zone_egress_handshake_failures_total")), ""],
    ["permission denied", num(sum(samples, "zone_egress_permission_denied_total")), ""],
    ["upstream dial failures", num(sum(samples, "zone_egress_dial_failures_total")), ""],
  ];
  fill("counters", rows.map((r) => {
    const tr = row(r);
    tr.dataset.counter = r[0];
    return tr;
  }), "no counters");
  const reasons = new Map();
  for (const s of samples) {
    if (s.name === "zone_egress_connections_rejected_total") {
      reasons.set(s.labels.reason, (reasons.get(s.labels.reason) || 0) + s.value);
    }
  }
  fill("refusals", [...reasons.entries()].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1])
    .map(([reason, v]) => row([el("code", reason), num(v), rate(perSecond("reason/" + reason, v, now, counters))])),
    "no refusals");

  // Meshes.
  const caByMesh = new Map(status.meshes.map((m) => [m.name, m]));
  fill("meshes", meshes.map((m) => {
    const s = caByMesh.get(m.name) || {};
    const mtls = s.mtls ? s.mtls.enabledBackend + " (" + s.mtls.type + ")" : "off";
    let ca = "–";
    if (s.ca && s.ca.notAfter) {
      const days = Math.floor((Date.parse(s.ca.notAfter) - now) / 86400000);
      ca = s.ca.notAfter.slice(0, 10) + " (" + days + " days)";
    } else if (s.mtls) {
      ca = "not loaded on this node yet";
    }
    return row([m.name, s.mtls ? badge(mtls, "ok") : badge("mTLS off", "warn"), s.zoneEgress ? "yes" : "no", ca]);
  }), "no meshes: apply a Mesh");
  document.getElementById("meshes-count").textContent = "(" + meshes.length + ")";

  // Links.
  const up = links.filter((l) => l.state === "up").length;
  fill("links", links.map((l) => {
    const tr = row([
      l.name, l.zone, badge(l.state, l.state === "up" ? "ok" : l.state === "down" ? "bad" : "warn"),
      { text: l.rttMs === null || l.rttMs === undefined ? "–" : l.rttMs.toFixed(1) + " ms", cls: "num" },
      num(l.openStreams), bytes(l.bytesSent), bytes(l.bytesReceived),
      { text: l.lastError || "", cls: "reason" },
    ]);
    tr.dataset.link = l.name;
    return tr;
  }), "no links (an ingress node, or no other zone is known)");
  document.getElementById("links-count").textContent = links.length ? "(" + up + " of " + links.length + " up)" : "";

  // External services, with this node's traffic for their service.
  const traffic = (mesh, service) => {
    const m = { mesh, service };
    const total = sum(samples, "zone_egress_connections_routed_total", m);
    return {
      total,
      perS: perSecond("svc/" + mesh + "/" + service, total, now, counters),
      active: sum(samples, "zone_egress_connections_active", m),
      bytes: sum(samples, "zone_egress_bytes_total", m),
    };
  };
  const services = [];
  for (const { mesh, es, mes } of perMesh) {
    for (const r of es) {
      const service = (r.tags && r.tags["kuma.io/service"]) || r.name;
      const address = r.networking ? r.networking.address : "";
      const tls = r.networking && r.networking.tls && r.networking.tls.enabled ? " (TLS)" : "";
      services.push({ mesh, kind: "ExternalService", name: r.name, service, address: address + tls });
    }
    for (const r of mes) {
      const spec = r.spec || {};
      const eps = (spec.endpoints || []).map((e) => e.address + ":" + e.port).join(", ");
      const tls = spec.tls && spec.tls.enabled ? " (TLS)" : "";
      services.push({ mesh, kind: "MeshExternalService", name: r.name, service: r.name, address: eps + tls });
    }
  }
  fill("services", services.map((s) => {
    const t = traffic(s.mesh, s.service);
    const tr = row([s.mesh, s.kind, s.name, s.service, s.address, num(t.total), rate(t.perS), num(t.active), bytes(t.bytes)]);
    tr.dataset.service = s.mesh + "/" + s.name;
    tr.dataset.connections = String(t.total);
    return tr;
  }), "no external services");
  document.getElementById("services-count").textContent = "(" + services.length + ")";

  // Every (mesh, service) this node routed, external or another zone's.
  const pairs = new Map();
  for (const s of samples) {
    if (s.name === "zone_egress_connections_routed_total" && s.labels.mesh !== undefined) {
      pairs.set(s.labels.mesh + "\u0000" + s.labels.service, [s.labels.mesh, s.labels.service]);
    }
  }
  fill("traffic", [...pairs.values()].sort().map(([mesh, service]) => {
    const t = traffic(mesh, service);
    const m = { mesh, service };
    return row([mesh, service, num(t.total), rate(t.perS), num(t.active),
      bytes(sum(samples, "zone_egress_bytes_total", { ...m, direction: "upstream" })),
      bytes(sum(samples, "zone_egress_bytes_total", { ...m, direction: "downstream" }))]);
  }), "no connections routed by this node yet");

  // The health line: what a person needs in five seconds.
  const health = document.getElementById("health");
  const present = (byState.alive || 0) + (byState.draining || 0);
  const problems = [];
  if (byState.dead) problems.push(byState.dead + " dead");
  if (notReady.length) problems.push(notReady.length + " not ready (" + notReady.map((m) => m.name).join(", ") + ")");
  if (links.length && up < links.length) problems.push((links.length - up) + " of " + links.length + " links not up");
  if (!ready.ready) problems.push("this node is not ready: " + (ready.reasons || []).join("; "));
  // Warnings do not make the node unready but break something (a mesh whose CA cannot be
  // loaded closes every terminated connection of the mesh): amber, with the text.
  const warnings = ready.warnings || [];
  if (warnings.length) problems.push("warning: " + warnings.join("; "));
  const summary = present + " of " + members.length + " members present" +
    (links.length ? ", " + up + "/" + links.length + " links up" : "") +
    ", " + Math.round(active) + " connections active here";
  health.className = problems.length === 0 ? "ok" : (byState.dead || !ready.ready ? "bad" : "warn");
  health.replaceChildren(el("span", problems.length === 0 ? "Healthy · " : "Degraded · "),
    el("span", problems.length === 0 ? summary : problems.join(" · ") + " — " + summary, "detail"));
  health.dataset.state = problems.length === 0 ? "healthy" : "degraded";

  previous = { at: now, counters };
}

function showError(text) {
  const e = document.getElementById("error");
  e.textContent = text;
  e.style.display = text ? "block" : "none";
}

async function loop() {
  try {
    await refresh();
    showError("");
    document.getElementById("auth").style.display = "none";
  } catch (e) {
    if (e && e.unauthorized) {
      document.getElementById("auth").style.display = "block";
      showError(token() ? "the token was refused" : "");
      const health = document.getElementById("health");
      health.className = "warn";
      health.dataset.state = "token";
      health.textContent = token()
        ? "The token was refused: enter this node's read token (or admin token) below"
        : "This node needs its read token to show the zone: enter it below";
    } else {
      showError("cannot read this node: " + (e && e.message ? e.message : e));
      const health = document.getElementById("health");
      health.className = "bad";
      health.textContent = "This node does not answer";
    }
  }
  setTimeout(loop, REFRESH_MS);
}

document.getElementById("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("zone-egress-token", document.getElementById("token").value);
  document.getElementById("token").value = "";
});

loop();
