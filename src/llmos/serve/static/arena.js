// The arena battle page: one prompt, two anonymous answers streamed side by side from
// POST /arena/api/battles (server-sent events read with fetch + a ReadableStream), four votes,
// the names after the vote. Plain JavaScript, no build step; answers are shown as text.
"use strict";

const $ = (id) => document.getElementById(id);
let battle = null;      // the current battle's id
let controller = null;  // aborts the answers being streamed

function setStatus(text, ok = false) {
  $("status").textContent = text;
  $("status").className = ok ? "ok" : "";
}

function side(name) { return $("side-" + name); }

function reset() {
  if (controller) controller.abort();
  controller = null;
  battle = null;
  for (const s of ["a", "b"]) {
    const el = side(s);
    el.dataset.done = "0";
    el.classList.remove("streaming", "winner");
    el.querySelector(".answer").textContent = "";
    const name = el.querySelector(".name");
    name.textContent = "";
    name.hidden = true;
  }
  $("votes").hidden = true;
  for (const b of $("votes").querySelectorAll("button")) b.disabled = false;
  $("input").disabled = false;
  $("send").disabled = false;
  setStatus("");
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
      }
    }
  }
}

async function startBattle(prompt) {
  reset();
  $("input").disabled = true;
  $("send").disabled = true;
  for (const s of ["a", "b"]) side(s).classList.add("streaming");
  setStatus("");
  controller = new AbortController();
  let votable = false;
  try {
    const r = await fetch("/arena/api/battles", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({prompt}), signal: controller.signal});
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || r.statusText);
    }
    await readEvents(r, (ev) => {
      if (ev.battle) battle = ev.battle;
      if (ev.side) {
        const el = side(ev.side);
        const answer = el.querySelector(".answer");
        if (ev.delta) answer.textContent += ev.delta;
        if (ev.error) {
          const p = document.createElement("p");
          p.className = "error";
          p.textContent = "This model failed: " + ev.error;
          answer.append(p);
        }
        if (ev.done || ev.error) {
          el.classList.remove("streaming");
          el.dataset.done = "1";
        }
      }
      if (ev.end) votable = ev.votable;
    });
  } catch (e) {
    if (e.name !== "AbortError") setStatus("Error: " + e.message);
  }
  controller = null;
  for (const s of ["a", "b"]) side(s).classList.remove("streaming");
  if (votable) {
    $("votes").hidden = false;
    setStatus("Which answer is better?", true);
  } else if (!$("status").textContent) {
    setStatus("No vote for this round: a model failed. Start a new round.");
  }
}

async function vote(winner) {
  if (!battle) return;
  for (const b of $("votes").querySelectorAll("button")) b.disabled = true;
  try {
    const r = await fetch(`/arena/api/battles/${battle}/vote`, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({winner})});
    const body = await r.json();
    if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
    for (const [s, key] of [["a", "model_a"], ["b", "model_b"]]) {
      const name = side(s).querySelector(".name");
      name.textContent = "· " + body[key];
      name.hidden = false;
      if (winner === key) side(s).classList.add("winner");
    }
    setStatus(body.counted ? "Thanks, your vote counts. Start a new round when you like."
              : "Thanks. This vote does not count: " + body.reason + ".", body.counted);
    battle = null;
  } catch (e) {
    setStatus("Error: " + e.message);
    for (const b of $("votes").querySelectorAll("button")) b.disabled = false;
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = $("input").value.trim();
  if (prompt) startBattle(prompt);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
for (const b of $("votes").querySelectorAll("button")) {
  b.addEventListener("click", () => vote(b.dataset.winner));
}
$("new-round").addEventListener("click", () => {
  reset();
  $("input").value = "";
  $("input").focus();
});
fetch("/arena/api/models").then((r) => r.json()).then((m) => {
  $("model-count").textContent = `${m.count} models in the arena`;
});
