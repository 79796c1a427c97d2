// The chat page: one session per browser (its id in localStorage, so a reload continues
// the conversation), replies streamed token by token from /v1/sessions/{id}/messages/stream.
"use strict";

const SESSION_KEY = "personachat.session";
const API_KEY = "personachat.apiKey";
const $ = (id) => document.getElementById(id);
let sessionId = localStorage.getItem(SESSION_KEY);
let busy = false;

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error.message : `HTTP ${status}`);
    this.status = status;
  }
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = localStorage.getItem(API_KEY);
  if (key) h["X-API-Key"] = key;
  return h;
}

async function request(method, path, body) {
  const res = await fetch(path, {
    method, headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) $("key-box").hidden = false;
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function bubble(role, text) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  li.textContent = text;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function personaLines() {
  const lines = $("persona").value.split("\n").map((s) => s.trim()).filter(Boolean);
  return lines.length ? lines : null;
}

function show(session) {
  sessionId = session.id;
  localStorage.setItem(SESSION_KEY, session.id);
  $("persona").value = session.personality.join("\n");
  $("log").replaceChildren();
  if (session.messages.length && session.messages[0].seq > 1) {
    bubble("note", "(older messages were dropped by the server's history limit)");
  }
  for (const m of session.messages) bubble(m.role, m.text);
}

async function load() {
  if (sessionId) {
    try {
      show(await request("GET", `/v1/sessions/${encodeURIComponent(sessionId)}`));
      status("");
      return;
    } catch (err) {
      if (err.status !== 404) { status(err.message, true); return; }
    }
  }
  await newChat();
}

async function newChat() {
  try {
    show(await request("POST", "/v1/sessions", { personality: personaLines() }));
    status("New conversation.");
  } catch (err) {
    status(err.message, true);
  }
}

async function savePersona() {
  try {
    show(await request("PUT", `/v1/sessions/${encodeURIComponent(sessionId)}`,
      { personality: personaLines() }));
    status("Persona saved; the conversation goes on.");
  } catch (err) {
    status(err.message, true);
  }
}

function decodingOptions() {
  const options = {};
  const temperature = parseFloat($("temperature").value);
  const maxLength = parseInt($("max-length").value, 10);
  if (!Number.isNaN(temperature)) options.temperature = temperature;
  if (!Number.isNaN(maxLength)) options.max_length = maxLength;
  if ($("greedy").checked) options.do_sample = false;
  return Object.keys(options).length ? options : null;
}

function clientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Reads "event: NAME\ndata: JSON\n\n" blocks from a fetch body, calling onEvent(name, data).
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

async function send(text) {
  busy = true;
  $("send").disabled = true;
  bubble("user", text);
  const reply = bubble("bot pending", "");
  let finished = false;
  try {
    const res = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}/messages/stream`, {
      method: "POST", headers: headers(true),
      body: JSON.stringify({ text, options: decodingOptions(), client_id: clientId() }),
    });
    if (res.status === 401) $("key-box").hidden = false;
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    await readEvents(res.body, (name, data) => {
      if (name === "token") reply.textContent = data.text;
      else if (name === "done") { reply.textContent = data.reply; finished = true; }
      else if (name === "error") throw new ApiError(500, data);
      reply.scrollIntoView({ block: "end" });
    });
    if (!finished) throw new Error("the connection closed before the reply was complete");
    status("");
  } catch (err) {
    reply.classList.add("failed");
    reply.textContent = err.message;
    status(err.message, true);
    if (!(err instanceof ApiError)) setTimeout(load, 1000); // the server may have stored it
  } finally {
    reply.classList.remove("pending");
    busy = false;
    $("send").disabled = false;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || busy || !sessionId) return;
  $("message").value = "";
  send(text);
});
$("new-chat").addEventListener("click", newChat);
$("save-persona").addEventListener("click", savePersona);
$("save-key").addEventListener("click", () => {
  localStorage.setItem(API_KEY, $("api-key").value.trim());
  $("key-box").hidden = true;
  load();
});
load();
