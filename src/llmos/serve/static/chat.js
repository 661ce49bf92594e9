// The llmos web chat: plain JavaScript, no build step, no network beyond this server.
// Answers stream from /v1/chat/completions (stream: true) and are read with fetch + a
// ReadableStream; built-in tool activity arrives in the `llmos_tool_events` delta field.
// A profile's tools with side effects (saving a memory, fetching a page, asking another model)
// do not run until the user allows them: the answer ends with their `tool_calls`, the page asks,
// runs an allowed call with POST /v1/llmos/tool_calls and sends the result back.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["system", "temperature", "top-p", "max-tokens", "think", "think-n", "user",
                  "api-key"];
const CONFIRM_ROUNDS = 4; // answers in a row that may stop for a confirmation
let history = [];      // the conversation, OpenAI message shape, without the system prompt
let controller = null; // aborts the answer being streamed
let pending = null;    // resolves the confirmation being asked (false: declined)
let busy = false;      // an answer, its confirmations and their tool calls are under way

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
  confirm(call) {  // a box asking the user; resolves true when the call is allowed
    const box = document.createElement("details");
    box.className = "tool confirm";
    box.open = true;
    const summary = document.createElement("summary");
    summary.textContent = `${call.function.name}(${call.function.arguments})`;
    const ask = document.createElement("p");
    ask.textContent = "The assistant wants to run this tool. Allow it?";
    const allow = document.createElement("button");
    allow.type = "button";
    allow.className = "allow";
    allow.textContent = "Allow";
    const deny = document.createElement("button");
    deny.type = "button";
    deny.className = "deny";
    deny.textContent = "Deny";
    ask.append(" ", allow, " ", deny);
    box.append(summary, ask);
    this.el.appendChild(box);
    box.scrollIntoView({block: "end"});
    return new Promise((resolve) => {
      pending = (ok) => {
        pending = null;
        ask.textContent = ok ? "allowed" : "declined";
        resolve(ok);
      };
      allow.addEventListener("click", () => pending && pending(true));
      deny.addEventListener("click", () => pending && pending(false));
    }).then((ok) => ({ok, box}));
  }
  result(box, content) {
    const pre = document.createElement("pre");
    pre.textContent = content;
    box.appendChild(pre);
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
  const user = $("user").value.trim();
  if (user) body.user = user;  // whose memories a profile keeps
  body.llmos_confirm = true;     // tools with side effects wait for the user
  return body;
}

async function send(text) {
  const conversation = history;  // "New chat" mid-answer must not receive this answer
  conversation.push({role: "user", content: text});
  addMessage("user", text);
  // the model and user this message was sent to, whatever the settings say meanwhile
  const target = {model: $("model").value, user: $("user").value.trim()};
  busy = true;
  try {
    for (let round = 0; round < CONFIRM_ROUNDS && conversation === history; round++) {
      const calls = await answerOnce(conversation);
      if (!calls.length) break;
      await runConfirmed(conversation, calls, target);
    }
  } finally {
    busy = false;
  }
}

// The calls an answer stopped at, each allowed or declined by the user; the results go into
// the conversation as tool messages, as in any OpenAI client's tool loop.
async function runConfirmed(conversation, calls, target) {
  for (const {call, answer} of calls) {
    const {ok, box} = await answer.confirm(call);
    if (conversation !== history) return;
    let content = "The user declined this tool call.";
    if (ok) {
      try {
        const body = {model: target.model, name: call.function.name,
                      arguments: call.function.arguments};
        if (target.user) body.user = target.user;
        const response = await fetch("/v1/llmos/tool_calls", {
          method: "POST", headers: headers(), body: JSON.stringify(body)});
        if (!response.ok) throw new Error(await errorMessage(response));
        content = (await response.json()).content;
      } catch (e) {
        content = "error: " + e.message;
      }
    }
    answer.result(box, content);
    conversation.push({role: "tool", tool_call_id: call.id, name: call.function.name,
                       content});
  }
}

// One streamed answer; returns the tool calls it stopped at (for the user to confirm).
async function answerOnce(conversation) {
  const answer = new Answer();
  const calls = [];
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
      for (const c of delta.tool_calls || []) calls[c.index] = c;
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
    const message = {role: "assistant", content: answer.content};
    if (reason === "tool_calls" && calls.length) message.tool_calls = calls.map(
      (c) => ({id: c.id, type: "function", function: c.function}));
    conversation.push(message);
    controller = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
  return reason === "tool_calls" ? calls.map((call) => ({call, answer})) : [];
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
  if (pending) pending(false);
  busy = false;  // the old conversation's loop stops at its next check
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
  if (!text || controller || pending || busy) return;
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
