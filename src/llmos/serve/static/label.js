// The labeling app: a small single page over /label/api (see serve/labeling.py).
// Views: #login, # (projects), #p/ID/TAB with TAB in write | compare | review | instructions | data.
"use strict";

const $ = (id) => document.getElementById(id);
const API = "/label/api";
let me = null;          // {id, name, role}
let project = null;     // the open project
let current = {};       // the item on screen per tab: {write: item, compare: item}
let skipped = {write: [], compare: []};
let reviewing = null;   // the label open in Review

// ---- helpers -----------------------------------------------------------------------------

function status(text, error) {
  $("status").textContent = text || "";
  $("status").className = error ? "error" : "";
}

async function call(method, path, body, raw) {
  const opts = {method, headers: {}};
  if (raw !== undefined) {
    opts.body = raw;
    opts.headers["Content-Type"] = "text/plain";
  } else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(API + path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error((data.error && data.error.message) || data.detail || r.statusText);
    err.status = r.status;
    err.data = data;
    throw err;
  }
  return data;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;"})[c]);
}

// Headings, lists, paragraphs, **bold**, *italic*, `code` and fenced code; HTML is escaped.
function renderMarkdown(src) {
  const inline = (t) => escapeHtml(t).replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>").replace(/\*([^*]+)\*/g, "<em>$1</em>");
  const out = [];
  let list = null, para = [], code = null;
  const flush = () => {
    if (para.length) out.push("<p>" + inline(para.join(" ")) + "</p>");
    if (list) out.push("</" + list + ">");
    para = [];
    list = null;
  };
  for (const line of src.split("\n")) {
    if (code !== null) {
      if (/^\s*```/.test(line)) { out.push("<pre><code>" + escapeHtml(code.join("\n")) +
        "</code></pre>"); code = null; } else code.push(line);
      continue;
    }
    let m;
    if (/^\s*```/.test(line)) { flush(); code = []; }
    else if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      flush();
      out.push(`<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`);
    } else if ((m = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/))) {
      const kind = /\d/.test(m[1]) ? "ol" : "ul";
      if (para.length || list !== kind) { flush(); out.push("<" + kind + ">"); list = kind; }
      out.push("<li>" + inline(m[2]) + "</li>");
    } else if (!line.trim()) flush();
    else if (list && /^\s+/.test(line)) out[out.length - 1] = out[out.length - 1]
      .replace(/<\/li>$/, " " + inline(line.trim()) + "</li>");
    else { if (list) flush(); para.push(line.trim()); }
  }
  if (code !== null) out.push("<pre><code>" + escapeHtml(code.join("\n")) + "</code></pre>");
  flush();
  return out.join("");
}

function showPrompt(el, messages) {
  el.innerHTML = messages.map((m) => `<div class="turn ${m.role}"><b>${m.role}</b>` +
    `<div>${escapeHtml(m.content)}</div></div>`).join("");
}

function clearViews() {  // nothing of another user's or project's work stays on screen
  for (const id of ["write-prompt", "compare-prompt", "compare-answers", "review-list"])
    $(id).innerHTML = "";
  $("write-answer").value = "";
  $("review-detail").hidden = true;
}

function show(view) {
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + view;
  for (const el of document.querySelectorAll(".owner-only"))
    el.hidden = !(me && me.role === "owner");
}

// ---- routing -----------------------------------------------------------------------------

async function route() {
  status("");
  if (!me) {
    try {
      me = (await call("GET", "/me")).user;
    } catch (e) {
      $("setup-note").hidden = !(e.data && e.data.setup);
      $("login-title").textContent = e.data && e.data.setup ? "Create the owner account"
        : "Log in";
      $("login-submit").textContent = e.data && e.data.setup ? "Create account" : "Log in";
      $("whoami").textContent = "";
      $("logout").hidden = true;
      return show("login");
    }
  }
  $("whoami").textContent = `${me.name} (${me.role})`;
  $("logout").hidden = false;
  const m = location.hash.match(/^#p\/(\d+)\/(\w+)/);
  if (!m) return showProjects();
  return showProject(Number(m[1]), m[2]);
}

window.addEventListener("hashchange", () => route().catch((e) => status(e.message, true)));

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {name: $("login-name").value, password: $("login-password").value};
  const setup = !$("setup-note").hidden;
  try {
    me = (await call("POST", setup ? "/setup" : "/login", body)).user;
    $("login-password").value = "";
    await route();
  } catch (e) { status(e.message, true); }
});

$("logout").addEventListener("click", async () => {
  await call("POST", "/logout").catch(() => {});
  me = project = reviewing = null;
  current = {};
  clearViews();
  location.hash = "";
  await route();
});

// ---- projects and accounts -------------------------------------------------------------------

async function showProjects() {
  project = null;
  $("project-name").textContent = "";
  show("projects");
  const list = await call("GET", "/projects");
  $("project-list").innerHTML = list.map((p) => `<li><a href="#p/${p.id}/write">` +
    `${escapeHtml(p.name)}</a> <span class="muted">${p.items} prompts, ${p.overlap} ` +
    `label(s) per item</span></li>`).join("") || "<li class=muted>No projects yet.</li>";
  if (me.role === "owner") {
    const users = await call("GET", "/users");
    $("user-list").innerHTML = users.map((u) =>
      `<li>${escapeHtml(u.name)} <span class="muted">${u.role}</span></li>`).join("");
  }
}

$("new-project").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const p = await call("POST", "/projects", {name: $("new-project-name").value,
      overlap: Number($("new-project-overlap").value),
      answers: Number($("new-project-answers").value)});
    location.hash = `#p/${p.id}/data`;
  } catch (e) { status(e.message, true); }
});

$("new-user").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await call("POST", "/users", {name: $("new-user-name").value,
      password: $("new-user-password").value, role: $("new-user-role").value});
    status(`added ${$("new-user-name").value}`);
    $("new-user-name").value = $("new-user-password").value = "";
    await showProjects();
  } catch (e) { status(e.message, true); }
});

// ---- one project ---------------------------------------------------------------------------

async function showProject(id, tab) {
  if (!project || project.id !== id) {
    clearViews();
    project = await call("GET", `/projects/${id}`);
    current = {};
    skipped = {write: [], compare: []};
  }
  $("project-name").textContent = "/ " + project.name;
  show("project");
  for (const a of document.querySelectorAll("#tabs a")) {
    a.href = `#p/${id}/${a.dataset.tab}`;
    a.classList.toggle("active", a.dataset.tab === tab);
  }
  for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== "tab-" + tab;
  await ({write: loadWrite, compare: loadCompare, review: loadReview,
    instructions: loadInstructions, data: loadData}[tab] || loadWrite)();
}

async function nextItem(kind) {
  const q = `/projects/${project.id}/next?kind=${kind}&skip=${skipped[kind].join(",")}`;
  return (await call("GET", q)).item;
}

// Write: the model drafts, the labeler edits.
async function loadWrite() {
  if (!current.write) {  // nothing stale on screen while the next item loads
    $("write-prompt").innerHTML = "";
    $("write-answer").value = "";
  }
  const item = current.write || await nextItem("write");
  current.write = item;
  $("write-submit").disabled = $("write-redraft").disabled = !item;
  $("write-model").textContent = "";
  if (!item) {
    $("write-prompt").innerHTML = "<p class=muted>Nothing left to write in this project.</p>";
    $("write-answer").value = "";
    return;
  }
  showPrompt($("write-prompt"), item.prompt);
  if (item.draft === undefined) await draft(item);
  $("write-answer").value = item.draft;
}

async function draft(item) {
  $("write-answer").value = "";
  $("write-answer").placeholder = "the model is writing a draft...";
  try {
    const d = await call("POST", `/items/${item.id}/draft`);
    item.draft = d.draft;
    $("write-model").textContent = `(draft by ${d.model})`;
  } catch (e) {
    item.draft = "";
    status(`no draft: ${e.message}`);
  }
  $("write-answer").placeholder = "";
}

$("write-redraft").addEventListener("click", async () => {
  await draft(current.write);
  $("write-answer").value = current.write.draft;
});

$("write-submit").addEventListener("click", async () => {
  const item = current.write;
  try {
    await call("POST", `/items/${item.id}/labels`, {kind: "write",
      content: $("write-answer").value, draft: item.draft});
    status("saved");
    current.write = null;
    await loadWrite();
  } catch (e) { status(e.message, true); }
});

$("write-skip").addEventListener("click", async () => {
  if (current.write) skipped.write.push(current.write.id);
  current.write = null;
  await loadWrite();
});

// Compare: order the answers (ranks 1..k; only a best is fine).
function rankingEditor(box, answers, ranking) {
  const k = answers.length;
  box.innerHTML = answers.map((a, i) => `<div class="answer card" data-id="${a.id}">
    <div class="answer-head"><b>Answer ${String.fromCharCode(65 + i)}</b>
    ${a.model ? `<span class="muted">${escapeHtml(a.model)}</span>` : ""}
    <label>rank <select class="rank" id="rank-${a.id}"><option value="">-</option>
    ${Array.from({length: k}, (_, r) => `<option value="${r + 1}">${r + 1}</option>`).join("")}
    </select></label>
    <button type="button" class="best">Best</button></div>
    <div class="answer-text">${escapeHtml(a.content) || "<i class=muted>(empty)</i>"}</div>
    </div>`).join("");
  (ranking || []).forEach((id, r) => { const s = box.querySelector(`#rank-${id}`);
    if (s) s.value = String(r + 1); });
  for (const b of box.querySelectorAll(".best")) b.addEventListener("click", () => {
    for (const s of box.querySelectorAll(".rank")) s.value = "";
    b.parentElement.querySelector(".rank").value = "1";
  });
}

function readRanking(box) {
  const ranked = [...box.querySelectorAll(".answer")].map((el) => ({id: Number(el.dataset.id),
    rank: Number(el.querySelector(".rank").value)})).filter((x) => x.rank);
  ranked.sort((a, b) => a.rank - b.rank);
  if (!ranked.length) throw new Error("rank at least the best answer");
  ranked.forEach((x, i) => { if (x.rank !== i + 1) throw new Error(
    "ranks must be 1, 2, 3... without gaps or ties"); });
  return ranked.map((x) => x.id);
}

async function loadCompare() {
  if (!current.compare) {
    $("compare-prompt").innerHTML = $("compare-answers").innerHTML = "";
  }
  const item = current.compare || await nextItem("compare");
  current.compare = item;
  $("compare-submit").disabled = !item;
  $("compare-reason").value = "";
  if (!item) {
    $("compare-prompt").innerHTML = "<p class=muted>Nothing left to compare here.</p>";
    $("compare-answers").innerHTML = "";
    return;
  }
  showPrompt($("compare-prompt"), item.prompt);
  if (!item.answers) {
    $("compare-answers").innerHTML = "<p class=muted>the model is writing answers...</p>";
    try {
      item.answers = (await call("GET", `/items/${item.id}/answers`)).answers;
    } catch (e) {
      $("compare-answers").innerHTML = "";
      return status(e.message, true);
    }
  }
  rankingEditor($("compare-answers"), item.answers);
}

$("compare-submit").addEventListener("click", async () => {
  const item = current.compare;
  try {
    await call("POST", `/items/${item.id}/labels`, {kind: "compare",
      ranking: readRanking($("compare-answers")), reason: $("compare-reason").value});
    status("saved");
    current.compare = null;
    await loadCompare();
  } catch (e) { status(e.message, true); }
});

$("compare-skip").addEventListener("click", async () => {
  if (current.compare) skipped.compare.push(current.compare.id);
  current.compare = null;
  await loadCompare();
});

// Review: the model critiques a label, the labeler accepts or revises it.
async function loadReview() {
  const labels = await call("GET", `/projects/${project.id}/labels`);
  $("review-list").innerHTML = labels.map((l) => `<li><a href="" data-id="${l.id}">` +
    `${l.kind} #${l.item}: ${escapeHtml(l.prompt[l.prompt.length - 1].content.slice(0, 70))}` +
    `</a> <span class="badge ${l.status}">${l.status}</span>` +
    (l.critique ? " <span class=muted>reviewed</span>" : "") + "</li>").join("")
    || "<li class=muted>No labels yet: write or compare first.</li>";
  for (const a of $("review-list").querySelectorAll("a")) a.addEventListener("click", (ev) => {
    ev.preventDefault();
    openReview(labels.find((l) => l.id === Number(a.dataset.id)));
  });
  if (reviewing) openReview(labels.find((l) => l.id === reviewing.id));
  else $("review-detail").hidden = true;
}

function openReview(label) {
  reviewing = label;
  if (!label) { $("review-detail").hidden = true; return; }
  $("review-detail").hidden = false;
  showPrompt($("review-prompt"), label.prompt);
  const write = label.kind === "write";
  $("review-edit-box").hidden = !write;
  if (write) {
    $("review-label").innerHTML = `<div class="label-text">${escapeHtml(label.content)}</div>`;
    $("review-edit").value = label.content;
  } else {
    $("review-label").innerHTML = `<div id="review-ranking"></div>` +
      `<label>Reason <textarea id="review-reason" rows="2"></textarea></label>`;
    rankingEditor($("review-ranking"), label.answers, label.ranking);
    $("review-reason").value = label.reason || "";
  }
  $("review-critique-text").hidden = !label.critique;
  $("review-critique-text").innerHTML = label.critique ? "<b>Model review</b>" +
    renderMarkdown(label.critique) : "";
}

$("review-critique").addEventListener("click", async () => {
  status("the model is reviewing...");
  try {
    reviewing = await call("POST", `/labels/${reviewing.id}/critique`);
    status("");
    openReview(reviewing);
  } catch (e) { status(e.message, true); }
});

$("review-accept").addEventListener("click", async () => {
  try {
    reviewing = await call("POST", `/labels/${reviewing.id}/accept`);
    await loadReview();
    status("accepted");
  } catch (e) { status(e.message, true); }
});

$("review-revise").addEventListener("click", async () => {
  try {
    const body = reviewing.kind === "write" ? {content: $("review-edit").value}
      : {ranking: readRanking($("review-ranking")), reason: $("review-reason").value};
    reviewing = await call("POST", `/labels/${reviewing.id}/revise`, body);
    await loadReview();
    status("revised");
  } catch (e) { status(e.message, true); }
});

// Instructions: read by all, edited by the owner.
async function loadInstructions() {
  $("instructions-view").innerHTML = renderMarkdown(project.instructions);
  $("instructions-edit").value = project.instructions;
}

$("instructions-save").addEventListener("click", async () => {
  try {
    project = {...project, ...await call("PUT", `/projects/${project.id}`,
      {instructions: $("instructions-edit").value})};
    status("instructions saved");
    await loadInstructions();
  } catch (e) { status(e.message, true); }
});

// Prompts, progress, agreement, export.
const pct = (x) => x === null || x === undefined ? "-" : (100 * x).toFixed(0) + "%";
const num = (x) => x === null || x === undefined ? "-" : x.toFixed(2);

async function loadData() {
  project = await call("GET", `/projects/${project.id}`);
  const s = project.stats, a = s.agreement;
  $("stats").innerHTML = [
    ["prompts queued", s.items],
    ["written answers", `${s.labels.write} (${s.complete.write} prompts done)`],
    ["comparisons", `${s.labels.compare} (${s.complete.compare} prompts done)`],
    ["reviewed by the model", `${s.reviewed} (${s.status.accepted || 0} accepted, ` +
      `${s.status.revised || 0} revised)`],
    ["compare: same best answer", `${pct(a.compare.same_best)} of ${a.compare.pairs} pairs` +
      ` of labelers`],
    ["compare: Cohen's kappa", num(a.compare.kappa)],
    ["compare: same order of two answers", pct(a.compare.pair_order_agreement)],
    ["write: similarity of two answers", `${pct(a.write.mean_similarity)} over ` +
      `${a.write.pairs} pairs`],
  ].map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join("");
  for (const kind of ["conversations", "comparisons"])
    $("export-" + kind).href = `${API}/projects/${project.id}/export?kind=${kind}`;
}

$("upload").addEventListener("click", async () => {
  const file = $("upload-file").files[0];
  if (!file) return status("choose a file first", true);
  try {
    const r = await call("POST", `/projects/${project.id}/prompts?format=` +
      $("upload-format").value, undefined, await file.text());
    current = {};
    await loadData();
    status(`queued ${r.added} prompts` + (r.duplicates ? ` (${r.duplicates} already queued)`
      : ""));
  } catch (e) { status(e.message, true); }
});

route().catch((e) => status(e.message, true));
