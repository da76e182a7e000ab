// The review page. Trace text is untrusted (it holds web pages): it enters the document only as text nodes
// (`el` below never sets innerHTML), and links only when they are http(s) URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { item: null, rejecting: false, reasons: [], busy: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function safeUrl(url) {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch (e) {
    return null;
  }
}

async function api(path, options) {
  const resp = await fetch(path, { credentials: "same-origin", ...options });
  const type = resp.headers.get("Content-Type") || "";
  const body = type.startsWith("application/json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new Error(typeof body === "string" ? body : JSON.stringify(body));
  return body;
}

function showProgress(p) {
  $("progress").textContent = `${p.decided} of ${p.items} reviewed` + (p.rejected ? ` · ${p.rejected} rejected` : "");
}

// "claim [3][4] more" -> text, <a href="#ref-3">[3]</a>, ...
function withCitations(text) {
  const parts = [];
  const re = /\[(\d+(?:\s*[,;–-]\s*\d+)*)\]/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    parts.push(text.slice(last, m.index));
    const first = m[1].split(/[^\d]+/)[0];
    parts.push(el("a", { class: "cite", href: `#ref-${first}` }, m[0]));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

function renderReport(report, references) {
  const box = el("div", { class: "report" });
  for (const block of report.split(/\n{2,}/)) {
    for (const line of block.split("\n")) {
      const h = line.match(/^#{1,6}\s+(.*)$/);
      if (h) box.append(el("h3", {}, h[1]));
      else if (line.trim()) box.append(el("p", { class: "text" }, ...withCitations(line)));
    }
  }
  const list = el("ol", { class: "references" });
  for (const r of references) {
    const href = safeUrl(r.url);
    const link = href ? el("a", { href, target: "_blank", rel: "noopener noreferrer" }, r.url) : el("span", {}, r.url);
    list.append(el("li", { id: `ref-${r.n}`, value: String(r.n) }, link, r.title ? ` – ${r.title}` : ""));
  }
  box.append(el("h3", {}, "References"), list);
  return box;
}

function renderItem(item) {
  const main = $("item");
  main.replaceChildren();
  if (!item) {
    main.append(el("p", { class: "note", id: "empty" }, "Nothing to review: every queued trace has a verdict."));
    $("verdict").hidden = true;
    return;
  }
  main.append(
    el("p", { class: "meta" }, `Trace ${item.trace_id} · batch ${item.batch}` + (item.topic ? ` · ${item.topic}` : "")),
    el("p", { class: "query" }, item.query),
    el("p", { class: "meta" }, "Judge: ", el("span", { class: "score" },
      item.score === null ? "no score" : `${item.score}`), item.reason ? ` – ${item.reason}` : ""),
  );
  if (item.subtask_list.length) {
    main.append(el("h2", {}, "Plan"), el("ol", {}, ...item.subtask_list.map((s) => el("li", {}, s))));
  }
  main.append(el("h2", {}, "Subtasks"));
  item.subtasks.forEach((st, i) => {
    const d = el("details", { class: "subtask" }, el("summary", {}, `${i + 1}. ${st.title}`));
    for (const step of st.steps) {
      d.append(el("div", { class: `step ${step.kind}` }, el("div", { class: "kind" }, step.kind.replace("_", " ")),
        el("div", { class: "text" }, step.text)));
    }
    d.append(el("div", { class: "answer" }, el("div", { class: "kind" }, "subtask answer"),
      el("div", { class: "text" }, st.answer || "(none)")));
    main.append(d);
  });
  main.append(el("h2", {}, "Report"), renderReport(item.report, item.references));
  $("verdict").hidden = false;
  $("comment").value = "";
  $("status").textContent = "";
  setRejecting(false);
  window.scrollTo(0, 0);
}

function setRejecting(on) {
  state.rejecting = on;
  $("reasons").hidden = !on;
  if (on) $("status").textContent = "reason? press 1–" + state.reasons.length + " (Esc: cancel)";
  else if ($("status").textContent.startsWith("reason?")) $("status").textContent = "";
}

async function loadNext() {
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) return;
  const data = await api(`/api/next?reviewer=${encodeURIComponent(reviewer)}`);
  state.item = data.item;
  showProgress(data.progress);
  renderItem(data.item);
}

async function decide(verdict, reasonCode) {
  if (!state.item || state.busy) return;
  state.busy = true;
  try {
    const data = await api(`/api/items/${state.item.id}/verdict`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reviewer: $("reviewer").value.trim(), verdict, reason_code: reasonCode || null,
                             comment: $("comment").value }),
    });
    showProgress(data.progress);
    await loadNext();
  } catch (e) {
    $("status").textContent = e.message;
  } finally {
    state.busy = false;
  }
}

function onKey(ev) {
  if (ev.target.matches("input, textarea")) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (state.rejecting && /^[1-9]$/.test(ev.key)) {
    const code = state.reasons[Number(ev.key) - 1];
    if (code) decide("reject", code);
  } else if (ev.key === "Escape") setRejecting(false);
  else if (ev.key === "a") decide("accept");
  else if (ev.key === "r" && state.item) setRejecting(true);
  else if (ev.key === "c" && state.item) { ev.preventDefault(); $("comment").focus(); }
  else if (ev.key === "e") {
    const all = [...document.querySelectorAll("details.subtask")];
    const open = !all.every((d) => d.open);
    all.forEach((d) => { d.open = open; });
  } else if (ev.key === "?") $("help").hidden = !$("help").hidden;
}

async function init() {
  const cfg = await api("/api/config");
  state.reasons = cfg.reason_codes;
  $("reasons").replaceChildren(...state.reasons.map((code, i) => {
    const b = el("button", { type: "button", "data-code": code }, `${i + 1} ${code}`);
    b.addEventListener("click", () => decide("reject", code));
    return b;
  }));
  showProgress(await api("/api/progress"));
  $("reviewer").value = localStorage.getItem("reviewer") || "";
  $("reviewer").addEventListener("change", () => {
    localStorage.setItem("reviewer", $("reviewer").value.trim());
    loadNext();
  });
  $("accept").addEventListener("click", () => decide("accept"));
  $("reject").addEventListener("click", () => setRejecting(!state.rejecting));
  $("help-toggle").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  document.addEventListener("keydown", onKey);
  await loadNext();
}

init().catch((e) => { $("item").replaceChildren(el("p", { class: "note" }, `Cannot load the queue: ${e.message}`)); });
