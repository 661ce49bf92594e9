// The memory page: list one user's memories (GET /v1/llmos/memories) and delete them
// (DELETE /v1/llmos/memories/{id}); every failure is said in #status.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function call(method, path) {
  const r = await fetch(path, { method, headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
  return body;
}

async function show() {
  const user = $("user").value.trim() || "default";
  const list = $("memories");
  try {
    const body = await call("GET", `/v1/llmos/memories?user=${encodeURIComponent(user)}`);
    list.replaceChildren();
    for (const m of body.data) {
      const item = document.createElement("li");
      item.dataset.id = m.id;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = m.text;
      const forget = document.createElement("button");
      forget.type = "button";
      forget.textContent = "Delete";
      forget.addEventListener("click", () => remove(user, m.id));
      item.append(text, " ", forget);
      list.appendChild(item);
    }
    const n = body.data.length;
    $("status").textContent = n
      ? `${n} ${n === 1 ? "memory" : "memories"} for ${user}` : `no memories for ${user}`;
  } catch (e) {
    $("status").textContent = e.message;
  }
}

async function remove(user, id) {
  try {
    await call("DELETE", `/v1/llmos/memories/${id}?user=${encodeURIComponent(user)}`);
    await show();
  } catch (e) {
    $("status").textContent = e.message;
  }
}

$("who").addEventListener("submit", (ev) => { ev.preventDefault(); show(); });
show();
