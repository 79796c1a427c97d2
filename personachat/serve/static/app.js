// The chat page: one session per browser (its id in localStorage, so a reload continues
// the conversation), replies streamed token by token from /v1/sessions/{id}/messages/stream.
"use strict";

const SESSION_KEY = "personachat.session";
const API_KEY = "personachat.apiKey";
const CHARACTER_KEY = "personachat.character"; // the card's name, for the session it made
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
  showDefaults();
  if (sessionId) {
    try {
      show(await request("GET", `/v1/sessions/${encodeURIComponent(sessionId)}`));
      const [cardSession, name] = JSON.parse(localStorage.getItem(CHARACTER_KEY) || "[]");
      showCharacter(cardSession === sessionId ? name : null);
      status("");
      return;
    } catch (err) {
      if (err.status !== 404) { status(err.message, true); return; }
    }
  }
  await newChat();
}

function showCharacter(name) {
  $("character").hidden = !name;
  $("character-name").textContent = name || "";
  if (name) localStorage.setItem(CHARACTER_KEY, JSON.stringify([sessionId, name]));
}

async function newChat() {
  try {
    show(await request("POST", "/v1/sessions", { personality: personaLines() }));
    showCharacter(null);
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

// ---- character cards: a Character Card V2 JSON, or a PNG with it in a "chara" text chunk
// (base64; tEXt, or zTXt / iTXt compressed), read here and sent as {"card": {...}}.
async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function pngCardText(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const found = {};
  for (let pos = 8; pos + 8 <= bytes.length;) {
    const length = view.getUint32(pos);
    const kind = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const body = bytes.subarray(pos + 8, pos + 8 + length);
    pos += 12 + length;
    if (kind === "IEND") break;
    if (!["tEXt", "zTXt", "iTXt"].includes(kind)) continue;
    const zero = body.indexOf(0);
    const keyword = latin1.decode(body.subarray(0, zero));
    if ((keyword !== "chara" && keyword !== "ccv3") || found[keyword]) continue;
    let text;
    if (kind === "tEXt") text = latin1.decode(body.subarray(zero + 1));
    else if (kind === "zTXt") text = latin1.decode(await inflate(body.subarray(zero + 2)));
    else {
      const compressed = body[zero + 1] === 1;
      let rest = body.subarray(zero + 3);
      rest = rest.subarray(rest.indexOf(0) + 1); // language tag
      rest = rest.subarray(rest.indexOf(0) + 1); // translated keyword
      text = new TextDecoder().decode(compressed ? await inflate(rest) : rest);
    }
    found[keyword] = text.trim();
  }
  const text = found.chara || found.ccv3;
  if (!text) throw new Error("this PNG holds no character card (no 'chara' text chunk)");
  if (text.startsWith("{")) return text;
  const raw = Uint8Array.from(atob(text.replace(/\s+/g, "")), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(raw);
}

async function readCardFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const png = bytes.length > 8 && bytes[0] === 0x89 && bytes[1] === 0x50;
  const text = png ? await pngCardText(bytes) : new TextDecoder().decode(bytes);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${file.name}: not a character card (${err.message})`);
  }
}

async function loadCard(file) {
  try {
    const card = await readCardFile(file);
    show(await request("POST", "/v1/sessions", { card }));
    showCharacter((card.data || card).name);
    status(`Talking to ${(card.data || card).name}.`);
  } catch (err) {
    status(err.message, true);
  }
}

async function showDefaults() {
  try {
    const health = await request("GET", "/health");
    $("defaults").textContent = Object.entries(health.default_options)
      .map(([k, v]) => `${k}=${v}`).join(", ");
  } catch (err) {
    $("defaults").textContent = "unavailable";
  }
}

// ---- the last turn: taken back on the server, then sent again (regenerate) or put back in
// the message box (edit).
async function undoTurn() {
  const undone = await request("DELETE",
    `/v1/sessions/${encodeURIComponent(sessionId)}/messages/last`);
  show(undone.session);
  return undone.text;
}

async function regenerate() {
  if (busy) return;
  busy = true; // from the click on, until the new reply is in (send keeps it set)
  $("send").disabled = true;
  let text;
  try {
    text = await undoTurn();
  } catch (err) {
    status(err.message, true);
    busy = false;
    $("send").disabled = false;
    return;
  }
  busy = false;
  send(text);
}

async function editLast() {
  if (busy) return;
  try {
    $("message").value = await undoTurn();
    $("message").focus();
    status("Edit your message and send it again.");
  } catch (err) {
    status(err.message, true);
  }
}

$("regenerate").addEventListener("click", regenerate);
$("edit-last").addEventListener("click", editLast);
$("card-file").addEventListener("change", () => {
  if ($("card-file").files.length) loadCard($("card-file").files[0]);
  $("card-file").value = "";
});
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  if (event.dataTransfer.files.length) loadCard(event.dataTransfer.files[0]);
});

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
