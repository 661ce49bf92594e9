// The profile editor: custom GPTs stored in the server's database, made and changed here
// (/v1/llmos/profiles, serve/profile_pages.py). A profile given to the server as a file is
// shown read-only; Duplicate makes an editable copy. Every failure is said in #status.
"use strict";

const $ = (id) => document.getElementById(id);
const LISTS = {hosts: "f-hosts", peers: "f-peers"};
let selected = null;   // {name, source} of the profile in the form; null: a new one
let kept = {};         // fields the form does not show (database, think's answer_kind)

function headers(json = true) {
  const h = json ? {"Content-Type": "application/json"} : {};
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function call(method, path, body, raw = false) {
  const h = headers(!raw);
  if (raw) h["Content-Type"] = "application/toml";
  const r = await fetch(path, {method, headers: h,
    body: body === undefined ? undefined : raw ? body : JSON.stringify(body)});
  if (!r.ok) {
    const err = await r.json().catch(() => ({}));
    const e = new Error((err.error && err.error.message) || `HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return r;
}

function status(text) { $("status").textContent = text || ""; }

function checkbox(box, value, label, checked) {
  const l = document.createElement("label");
  const c = document.createElement("input");
  c.type = "checkbox";
  c.value = value;
  c.checked = checked;
  l.append(c, " ", label);
  box.appendChild(l);
}

async function loadOptions() {
  const o = await (await call("GET", "/v1/llmos/profile_options")).json();
  const tools = $("f-tools");
  for (const t of o.tools) {
    checkbox(tools, t.name, `${t.name} (${t.capability})${t.confirm ? " ★" : ""}`, false);
  }
  const kb = $("f-knowledge");
  for (const name of o.knowledge) checkbox(kb, name, name, false);
  if (!o.knowledge.length) kb.append("none in this database (llmos knowledge add)");
  $("checkpoints").replaceChildren(...o.checkpoints.map((p) => new Option(p)));
}

async function loadList(select) {
  const body = await (await call("GET", "/v1/llmos/profiles")).json();
  const list = $("profile-list");
  list.replaceChildren();
  for (const p of body.data) {
    const item = document.createElement("li");
    item.dataset.name = p.name;
    item.append(p.name);
    const source = document.createElement("span");
    source.className = "source";
    source.textContent = p.source === "file" ? "file" : "";
    item.appendChild(source);
    if (p.problem) {
      const problem = document.createElement("span");
      problem.className = "problem";
      problem.textContent = p.problem;
      item.appendChild(problem);
    }
    item.addEventListener("click", () => open(p.name));
    list.appendChild(item);
  }
  status(body.data.length ? "" : "no profiles yet: New makes one");
  if (select) await open(select);
}

function fill(p, source) {
  $("f-name").value = p.name || "";
  $("f-description").value = p.description || "";
  $("f-model").value = p.model || "";
  $("f-instructions").value = p.instructions || "";
  const tools = p.tools || ["calculator", "python"];
  for (const c of $("f-tools").querySelectorAll("input")) c.checked = tools.includes(c.value);
  for (const c of $("f-knowledge").querySelectorAll("input")) {
    c.checked = (p.knowledge || []).includes(c.value);
  }
  $(LISTS.hosts).value = ((p.browse || {}).hosts || []).join("\n");
  $(LISTS.peers).value = (p.peers || []).join("\n");
  $("f-passages").value = (p.search || {}).passages || 3;
  $("f-chars").value = (p.search || {}).chars || 1500;
  for (const k of ["temperature", "top_p", "max_tokens"]) {
    const v = (p.sampling || {})[k];
    $("f-" + k).value = v === undefined ? "" : v;
  }
  $("f-think").value = (p.think || {}).strategy || "";
  $("f-think-n").value = (p.think || {}).n || 8;
  // Fields the form does not show are kept as they were.
  kept = {};
  if (p.database) kept.database = p.database;
  if (p.think && p.think.answer_kind) kept.answer_kind = p.think.answer_kind;
  const readOnly = source === "file";
  for (const el of $("editor").querySelectorAll("input, textarea, select")) el.disabled = readOnly;
  $("save").disabled = $("delete").disabled = readOnly;
  $("source").textContent = readOnly
    ? "From a file given to the server: read-only here. Duplicate it to make an editable copy."
    : source === "database" ? "Stored in the server's database." : "A new profile.";
  $("editor").hidden = false;
}

function read() {
  const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
  const checked = (id) => [...$(id).querySelectorAll("input:checked")].map((c) => c.value);
  const {answer_kind: answerKind, ...rest} = kept;
  const p = {...rest, name: $("f-name").value.trim(), model: $("f-model").value.trim(),
             tools: checked("f-tools")};
  for (const k of ["description", "instructions"]) {
    const v = $("f-" + k).value.trim();
    if (v) p[k] = v;
  }
  const knowledge = checked("f-knowledge");
  if (knowledge.length) p.knowledge = knowledge;
  const hosts = lines(LISTS.hosts);
  if (hosts.length) p.browse = {hosts};
  const peers = lines(LISTS.peers);
  if (peers.length) p.peers = peers;
  p.search = {passages: parseInt($("f-passages").value, 10),
              chars: parseInt($("f-chars").value, 10)};
  const sampling = {};
  for (const k of ["temperature", "top_p", "max_tokens"]) {
    const v = $("f-" + k).value;
    if (v !== "") sampling[k] = k === "max_tokens" ? parseInt(v, 10) : parseFloat(v);
  }
  if (Object.keys(sampling).length) p.sampling = sampling;
  if ($("f-think").value) {
    p.think = {strategy: $("f-think").value, n: parseInt($("f-think-n").value, 10)};
    if (answerKind) p.think.answer_kind = answerKind;
  }
  return p;
}

function mark(name) {
  for (const li of $("profile-list").children) {
    li.classList.toggle("selected", li.dataset.name === name);
  }
}

async function open(name) {
  try {
    const body = await (await call("GET", `/v1/llmos/profiles/${encodeURIComponent(name)}`))
      .json();
    selected = {name, source: body.source};
    fill(body.profile, body.source);
    mark(name);
  } catch (e) {
    status(e.message);
  }
}

async function save(ev) {
  ev.preventDefault();
  const p = read();
  try {
    if (selected && selected.source === "database") {
      await call("PUT", `/v1/llmos/profiles/${encodeURIComponent(selected.name)}`, p);
    } else {
      await call("POST", "/v1/llmos/profiles", p);
    }
    await loadList(p.name);
    status(`saved ${p.name}: served as model ${p.name}`);
  } catch (e) {
    status(e.message);
  }
}

async function duplicate() {
  const p = read();
  const names = [...$("profile-list").children].map((li) => li.dataset.name);
  let name = `${p.name}-copy`;
  for (let i = 2; names.includes(name); i++) name = `${p.name}-copy${i}`;
  try {
    await call("POST", "/v1/llmos/profiles", {...p, name});
    await loadList(name);
    status(`duplicated as ${name}`);
  } catch (e) {
    status(e.message);
  }
}

async function remove() {
  if (!selected || !confirm(`Delete profile ${selected.name}? Export it first to keep a copy.`)) {
    return;
  }
  try {
    await call("DELETE", `/v1/llmos/profiles/${encodeURIComponent(selected.name)}`);
    const gone = selected.name;
    selected = null;
    $("editor").hidden = true;
    await loadList();
    status(`deleted ${gone}`);
  } catch (e) {
    status(e.message);
  }
}

async function exportFile() {
  if (!selected) return;
  try {
    const r = await call("GET", `/v1/llmos/profiles/${encodeURIComponent(selected.name)}/export`);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([await r.text()], {type: "application/toml"}));
    link.download = `${selected.name}.toml`;
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (e) {
    status(e.message);
  }
}

async function importFile() {
  const file = $("import").files[0];
  if (!file) return;
  const text = await file.text();
  const post = (replace) => call("POST", `/v1/llmos/profiles/import?replace=${replace}`, text,
                                 true);
  try {
    let r;
    try {
      r = await post(false);
    } catch (e) {
      if (e.status !== 409 || !confirm(`${e.message} Replace it with the file?`)) throw e;
      r = await post(true);
    }
    const name = (await r.json()).profile.name;
    await loadList(name);
    status(`imported ${name}`);
  } catch (e) {
    status(e.message);
  } finally {
    $("import").value = "";
  }
}

function newProfile() {
  selected = null;
  fill({}, "new");
  mark(null);
}

$("editor").addEventListener("submit", save);
$("duplicate").addEventListener("click", duplicate);
$("delete").addEventListener("click", remove);
$("export").addEventListener("click", exportFile);
$("import").addEventListener("change", importFile);
$("new").addEventListener("click", newProfile);
$("api-key").addEventListener("change", () => start());

async function start() {
  try {
    if (!$("f-tools").querySelector("input")) await loadOptions();
    await loadList();
  } catch (e) {
    status(e.message);
  }
}
start();
