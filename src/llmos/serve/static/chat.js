// The llmos web chat: plain JavaScript, no build step, no network beyond this server.
// Answers stream from /v1/chat/completions (stream: true) and are read with fetch + a
// ReadableStream; built-in tool activity arrives in the `llmos_tool_events` delta field.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["system", "temperature", "top-p", "max-tokens", "think", "think-n", "api-key"];
let history = [];      // the conversation, OpenAI message shape, without the system prompt
let controller = null; // aborts the answer being streamed

// ---- a small, safe markdown renderer ---------------------------------------------------------
// Every piece of text is HTML-escaped first; only the tags written here are ever produced.

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
                                          '"': "&quot;", "'": "&#39;"}[c]));
}

function inline(text) {
  return text.split(/(`[^`\n]+`)/g).map((part, i) => {
    if (i % 2) return "<code>" + escapeHtml(part.slice(1, -1)) + "</code>";
    return escapeHtml(part)
      .replace(/\*\*(?=\S)([^*\n]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([^_\n]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/(^|[^*\w])\*(?=\S)([^*\n]*?\S)\*(?![*\w])/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, "$1<em>$2</em>");
  }).join("");
}

const FENCE = /^\s*```/;
const ITEM = /^\s*([-*+]|\d+[.)])\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*)$/;

function renderMarkdown(src) {
  const lines = src.split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (FENCE.test(line)) {  // a code block; unclosed while the answer is still streaming
      const code = [];
      for (i++; i < lines.length && !FENCE.test(lines[i]); i++) code.push(lines[i]);
      i++;
      out.push("<pre><code>" + escapeHtml(code.join("\n")) + "</code></pre>");
    } else if (HEADING.test(line)) {
      const [, hashes, text] = line.match(HEADING);
      const level = Math.min(hashes.length + 2, 6);  // stay below the page's own heading
      out.push(`<h${level}>${inline(text)}</h${level}>`);
      i++;
    } else if (ITEM.test(line)) {
      const ordered = /\d/.test(line.match(ITEM)[1]);
      const items = [];
      while (i < lines.length && ITEM.test(lines[i])
             && /\d/.test(lines[i].match(ITEM)[1]) === ordered) {
        items.push("<li>" + inline(lines[i].match(ITEM)[2]) + "</li>");
        i++;
      }
      const tag = ordered ? "ol" : "ul";
      out.push(`<${tag}>${items.join("")}</${tag}>`);
    } else if (!line.trim()) {
      i++;
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i])
             && !ITEM.test(lines[i]) && !HEADING.test(lines[i])) para.push(inline(lines[i++]));
      out.push("<p>" + para.join("<br>") + "</p>");
    }
  }
  return out.join("");
}

// ---- the page --------------------------------------------------------------------------------

function status(text) { $("status").textContent = text || ""; }

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  if (text !== undefined) el.textContent = text;
  $("messages").appendChild(el);
  el.scrollIntoView({block: "end"});
  return el;
}

// One assistant answer: text segments (markdown) with tool boxes between them.
class Answer {
  constructor() {
    this.el = addMessage("assistant streaming");
    this.el.dataset.chunks = "0";
    this.content = "";
    this.segment = null;
    this.segmentText = "";
    this.tools = {};
  }
  text(delta) {
    if (!this.segment) {
      this.segment = document.createElement("div");
      this.segment.className = "content";
      this.el.appendChild(this.segment);
      this.segmentText = "";
    }
    this.content += delta;
    this.segmentText += delta;
    this.segment.innerHTML = renderMarkdown(this.segmentText);
  }
  reasoning(delta) {
    if (!this.thinking) {
      this.thinking = document.createElement("div");
      this.thinking.className = "reasoning";
      this.el.insertBefore(this.thinking, this.el.firstChild);
    }
    this.thinking.textContent += delta;
  }
  toolEvent(ev) {
    if (ev.type === "tool_result" && this.tools[ev.tool_call_id]) {
      const pre = document.createElement("pre");
      pre.textContent = ev.content;
      this.tools[ev.tool_call_id].appendChild(pre);
      return;
    }
    const box = document.createElement("details");
    box.className = "tool";
    box.open = true;
    const summary = document.createElement("summary");
    if (ev.type === "tool_call") summary.textContent = `${ev.name}(${ev.arguments})`;
    else if (ev.type === "tool_result") summary.textContent = `${ev.name} returned`;
    else if (ev.type === "context") summary.textContent = "context window: " + ev.content;
    else summary.textContent = "error: " + ev.content;
    box.appendChild(summary);
    if (ev.type === "tool_result") {
      const pre = document.createElement("pre");
      pre.textContent = ev.content;
      box.appendChild(pre);
    }
    if (ev.id) this.tools[ev.id] = box;
    this.el.appendChild(box);
    this.segment = null;  // text after a tool goes below it
  }
  thought(t) {  // what a System-2 answer spent and weighed
    const note = document.createElement("div");
    note.className = "thought";
    const weighed = (t.candidates || []).slice(0, 5).map((c) => "votes" in c
      ? `${c.answer} ×${c.votes}` : `${c.answer} ×${c.samples} (${c.score})`).join(", ");
    note.textContent = `${t.strategy}: ${t.samples} samples, ${t.tokens} tokens, `
      + `${t.seconds.toFixed(2)} s` + (weighed ? `; ${weighed}` : "");
    this.el.appendChild(note);
  }
  finish(reason) {
    this.el.classList.remove("streaming");
    if (reason === "length") {
      const note = document.createElement("div");
      note.className = "reasoning";
      note.textContent = "(stopped at the token limit)";
      this.el.appendChild(note);
    }
    this.el.dataset.done = "1";
  }
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

function requestBody() {
  const system = $("system").value.trim();
  const messages = (system ? [{role: "system", content: system}] : []).concat(history);
  const body = {model: $("model").value, messages, stream: true};
  const number = (id) => parseFloat($(id).value);
  if (!isNaN(number("temperature"))) body.temperature = number("temperature");
  if (!isNaN(number("top-p"))) body.top_p = number("top-p");
  if (!isNaN(number("max-tokens"))) body.max_tokens = Math.round(number("max-tokens"));
  if ($("think").value) {
    body.think = {strategy: $("think").value, n: Math.round(number("think-n")) || 8};
  }
  return body;
}

async function send(text) {
  const conversation = history;  // "New chat" mid-answer must not receive this answer
  conversation.push({role: "user", content: text});
  addMessage("user", text);
  const answer = new Answer();
  controller = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  status("");
  let reason = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()),
      signal: controller.signal});
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.think) answer.thought(chunk.think);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.reasoning_content) answer.reasoning(delta.reasoning_content);
      for (const ev of delta.llmos_tool_events || []) answer.toolEvent(ev);
      if (delta.content) answer.text(delta.content);
      if (choice.finish_reason) reason = choice.finish_reason;
      answer.el.dataset.chunks = String(Number(answer.el.dataset.chunks) + 1);
      answer.el.scrollIntoView({block: "end"});
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      status(e.message);
      answer.el.classList.add("error");
      if (!answer.content) answer.el.textContent = e.message;
    }
  } finally {
    answer.finish(reason);
    conversation.push({role: "assistant", content: answer.content});
    controller = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
}

async function loadModels() {
  const response = await fetch("/v1/models", {headers: headers()});
  if (response.status === 401) {
    showSettings(true);
    status("This server needs an API key: enter it under Settings.");
    return;
  }
  if (!response.ok) return status(await errorMessage(response));
  const models = (await response.json()).data.map((m) => m.id);
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...models.map((id) => new Option(id, id)));
  if (models.includes(chosen)) select.value = chosen;
  $("model-box").hidden = models.length < 2;
  $("model-name").textContent = models.length === 1 ? models[0] : "";
  status("");
}

function showSettings(show) {
  $("settings").hidden = !show;
  $("toggle-settings").setAttribute("aria-expanded", String(show));
}

function newChat() {
  if (controller) controller.abort();
  history = [];
  $("messages").replaceChildren();
  status("");
  $("input").focus();
}

// ---- wiring ----------------------------------------------------------------------------------

for (const id of SETTINGS) {  // remembered in this browser
  const saved = localStorage.getItem("llmos." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("llmos." + id, $(id).value));
}
$("api-key").addEventListener("change", loadModels);
$("toggle-settings").addEventListener("click", () => showSettings($("settings").hidden));
$("new-chat").addEventListener("click", newChat);
$("stop").addEventListener("click", () => controller && controller.abort());
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
loadModels();
