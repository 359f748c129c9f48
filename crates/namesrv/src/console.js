// The raftmq web console's script (served as /console.js; see crates/namesrv/src/console.rs): polls the JSON
// API every few seconds and renders it. Every value from the API goes into the page as text (textContent or
// an attribute), never as markup. A lookup can be given in the URL fragment: #id=…, #topic=…&key=…,
// #topic=…&queue=…&offset=…; #group=… names a consumer group.
"use strict";

const REFRESH_MS = 3000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
  }
  return e;
}

function table(headers, rows) {
  const t = el("table", {});
  t.append(el("tr", {}, ...headers.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(r);
  return t;
}

function td(v, cls) {
  return el("td", { class: cls || (typeof v === "number" ? "num" : null) }, v);
}

function replace(id, ...nodes) {
  const target = document.getElementById(id);
  target.replaceChildren(...nodes);
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
  return body;
}

function renderCluster(c) {
  const out = [];
  for (const cl of c.clusters) {
    for (const g of cl.groups) {
      out.push(el("div", { class: "note" }, "cluster " + cl.name + " · group " + g.brokerName + " · registered leader " + (g.registeredLeader || "none")));
      const rows = g.nodes.map((n) =>
        n.reachable
          ? el("tr", { "data-addr": n.addr, "data-node": n.nodeId, "data-role": n.role },
              td(n.nodeId), td(n.addr), td(n.role, n.role), td(n.term), td(n.lastLogIndex), td(n.commitIndex), td(n.appliedIndex),
              td(n.role === "Leader" ? (n.ready ? "ready" : "not ready yet") : ""), td(n.diskFull ? "disk full" : ""))
          : el("tr", { "data-addr": n.addr, "data-role": "unreachable" },
              td(n.registeredId), td(n.addr), td("unreachable", "down"), el("td", { colspan: 6, class: "down" }, n.error)));
      out.push(table(["node", "address", "role", "term", "last", "commit", "applied", "state", ""], rows));
    }
  }
  if (out.length === 0) out.push(el("p", { class: "note" }, "No broker registered with this nameserver."));
  if (c.nodesOmitted) out.push(el("p", { class: "note" }, c.nodesOmitted + " more nodes not shown (at most " + c.nodesMax + ")."));
  replace("cluster-body", ...out);
}

function renderTopics(t) {
  // One row per topic and broker group; below it only the queues that hold or held messages.
  const rows = [];
  for (const topic of t.topics) {
    for (const g of topic.groups) {
      if (g.error) {
        rows.push(el("tr", { "data-topic": topic.name }, el("td", {}, el("b", {}, topic.name)), td(g.brokerName), el("td", { colspan: 4, class: "down" }, g.error)));
        continue;
      }
      const queues = g.queues || [];
      rows.push(el("tr", { "data-topic": topic.name }, el("td", {}, el("b", {}, topic.name)), td(g.brokerName),
        td(queues.length + " queues"), td(""), td(g.messages), td(g.config ? "perm " + g.config.perm : "")));
      for (const q of queues) {
        if (q.maxOffset === 0) continue;
        rows.push(el("tr", { "data-topic": topic.name, "data-queue": q.queueId }, td(""), td(""), td(q.queueId), td(q.minOffset), td(q.maxOffset),
          td(q.lastUpdateTimestamp ? new Date(q.lastUpdateTimestamp).toISOString().replace("T", " ").slice(0, 19) : "")));
      }
    }
  }
  const out = [table(["topic", "group", "queue", "min", "max / messages", "newest"], rows)];
  if (t.topicsOmitted) out.push(el("p", { class: "note" }, t.topicsOmitted + " more topics not shown (at most " + t.topicsMax + ")."));
  if (t.queueRowsOmitted) out.push(el("p", { class: "note" }, t.queueRowsOmitted + " more queues not shown."));
  replace("topics-body", ...out);
}

function renderGroups(g) {
  const rows = [];
  for (const cg of g.groups) {
    rows.push(el("tr", { "data-group": cg.name, class: "group" }, el("td", { colspan: 4 }, el("b", {}, cg.name)), td("lag " + cg.lag)));
    for (const q of cg.queues) {
      if (q.consumerOffset === 0 && q.brokerOffset === 0) continue;
      rows.push(el("tr", { "data-group": cg.name }, td(q.topic), td(q.brokerName + " #" + q.queueId), td(q.consumerOffset), td(q.brokerOffset), td(q.lag)));
    }
    for (const e of cg.errors) rows.push(el("tr", {}, el("td", { colspan: 5, class: "down" }, e)));
  }
  const out = [];
  if (rows.length) out.push(table(["topic", "queue", "committed", "max", "lag"], rows));
  else out.push(el("p", { class: "note" }, "No consumer group known; name one above."));
  for (const n of g.notes) out.push(el("p", { class: "note" }, n));
  if (g.groupsOmitted) out.push(el("p", { class: "note" }, g.groupsOmitted + " more groups not shown (at most " + g.groupsMax + ")."));
  replace("groups-body", ...out);
}

function fmtRate(v) {
  return v === null || v === undefined ? "–" : v.toFixed(1) + "/s";
}

function renderRates(r) {
  const rows = [];
  for (const [g, v] of Object.entries(r.storedMessagesPerSec)) {
    rows.push(el("tr", {}, td("broker group " + g), td("messages stored"), td(fmtRate(v)), td(r.storedMessages[g])));
  }
  for (const [g, v] of Object.entries(r.commitlogBytesPerSec)) {
    rows.push(el("tr", {}, td("broker group " + g), td("commitlog bytes"), td(fmtRate(v)), td("")));
  }
  for (const [g, v] of Object.entries(r.committedPerSec)) {
    rows.push(el("tr", {}, td("consumer group " + g), td("offsets committed"), td(fmtRate(v)), td(r.committed[g])));
  }
  const note = r.intervalSeconds ? "over the last " + r.intervalSeconds.toFixed(1) + " s" : "first sample; rates follow on the next refresh";
  replace("rates-body", table(["what", "figure", "rate", "total"], rows), el("p", { class: "note" }, note));
}

function renderMessages(m) {
  const out = [];
  if (m.messages.length === 0) out.push(el("p", { class: "note", id: "message-none" }, "No message found."));
  for (const msg of m.messages) {
    const rows = [];
    for (const k of ["msgId", "offsetMsgId", "topic", "brokerName", "queueId", "queueOffset", "keys", "tags", "storeHost", "bornHost"]) {
      rows.push(el("tr", {}, el("th", {}, k), el("td", { "data-field": k }, msg[k])));
    }
    rows.push(el("tr", {}, el("th", {}, "stored"), td(new Date(msg.storeTimestamp).toISOString())));
    for (const [k, v] of Object.entries(msg.properties)) rows.push(el("tr", {}, el("th", {}, "property " + k), el("td", {}, v)));
    rows.push(el("tr", {}, el("th", {}, "body"), el("td", {}, msg.storedBodyBytes + " bytes stored" + (msg.bodyTruncated ? ", preview cut" : "") + (msg.bodyNote ? ", " + msg.bodyNote : ""))));
    out.push(el("div", { class: "message", "data-msgid": msg.msgId }, table(["field", "value"], rows), el("pre", { class: "body" }, msg.bodyPreview)));
  }
  for (const n of m.notes) out.push(el("p", { class: "note" }, n));
  if (m.messagesOmitted) out.push(el("p", { class: "note" }, "more messages match; not shown."));
  replace("message-result", ...out);
}

async function lookup(params) {
  const q = new URLSearchParams();
  for (const [k, v] of params) if (v.trim() !== "") q.set(k, v.trim());
  replace("message-result", el("p", { class: "note" }, "searching…"));
  try {
    renderMessages(await getJson("/api/message?" + q.toString()));
  } catch (e) {
    replace("message-result", el("p", { class: "down" }, e.message));
  }
}

function groupName() {
  return document.getElementById("group-name").value.trim();
}

async function refresh() {
  const named = groupName();
  const jobs = [
    ["cluster-body", "/api/cluster", renderCluster],
    ["topics-body", "/api/topics", renderTopics],
    ["groups-body", "/api/groups" + (named ? "?group=" + encodeURIComponent(named) : ""), renderGroups],
    ["rates-body", "/api/rates", renderRates],
  ];
  // One after another: the nameserver serves a few console requests at once.
  for (const [id, path, render] of jobs) {
    try {
      render(await getJson(path));
    } catch (e) {
      replace(id, el("p", { class: "down" }, e.message));
    }
  }
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function start() {
  const frag = new URLSearchParams(location.hash.replace(/^#/, ""));
  const form = document.getElementById("lookup-form");
  if (frag.get("group")) document.getElementById("group-name").value = frag.get("group");
  let wanted = false;
  for (const k of ["id", "topic", "key", "queue", "offset"]) {
    if (frag.get(k)) {
      form.elements[k].value = frag.get(k);
      wanted = true;
    }
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    lookup(new FormData(form).entries());
  });
  document.getElementById("group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    refresh();
  });
  if (wanted) lookup(new FormData(form).entries());
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
