// app.js: the chat page (index.html) on the rkstream.js client. No build step.
// Answers are Markdown (marked), sanitised by DOMPurify: model output is untrusted.
// Conversations and settings live in localStorage.

import { RkstreamClient, RkstreamError } from "./rkstream.js";
import { marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";

const STORE = "rkstream.conversations";
const CURRENT = "rkstream.current";
const SETTINGS = "rkstream.settings";
const API_KEY = "rkstream.apiKey";

const $ = (id) => document.getElementById(id);
const log = $("log");
const statusEl = $("status");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const list = $("conversations");
const modelSelect = $("model");
const notice = $("notice");
const attachments = $("attachments");
const fileInput = $("file");

// ---- storage -------------------------------------------------------------

function load(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (error) {
    console.warn("could not save", key, error);
  }
}

/** @type {{id: string, title: string, updated: number, messages: object[]}[]} */
let conversations = load(STORE, []);
if (!Array.isArray(conversations)) conversations = [];
let currentId = load(CURRENT, null);
const settings = { instructions: "", temperature: "", top_p: "", max_tokens: "", model: "",
  ...load(SETTINGS, {}) };

function saveConversations() {
  save(STORE, conversations);
  save(CURRENT, currentId);
}

function current() {
  return conversations.find((c) => c.id === currentId) ?? null;
}

function newConversation() {
  const conversation = { id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
    title: "New conversation", updated: Date.now(), messages: [] };
  conversations.unshift(conversation);
  currentId = conversation.id;
  return conversation;
}

// ---- rendering -----------------------------------------------------------

// Links in answers open in a new tab, without a handle on this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text));
}

/** Messages whose text changed since the last frame; drawn once per animation frame. */
const dirty = new Set();
let frame = 0;

function schedule(view) {
  dirty.add(view);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  for (const view of dirty) draw(view);
  dirty.clear();
  if (stick) log.scrollTop = log.scrollHeight;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A message's element, with what it needs to be redrawn. */
function messageView(message) {
  const node = el("div", `msg ${message.role}`);
  const view = { message, node, drawnText: null, drawnReasoning: null, drawnTools: 0 };
  if (message.role === "user") {
    node.append(message.content);  // the user's own text, shown as written
    const blobs = messageImages.get(message);
    if (blobs?.length) {
      const row = el("div", "thumbs");
      for (const blob of blobs) {
        const img = el("img");
        img.src = URL.createObjectURL(blob);
        img.alt = "attached image";
        row.append(img);
      }
      node.append(row);
    } else if (message.images) {
      node.append(el("div", "meta", `[${message.images} image${message.images > 1 ? "s" : ""}, not kept over a reload]`));
    }
    return view;
  }
  view.reasoning = el("details", "reasoning");
  view.reasoning.append(el("summary", "", "Reasoning"));
  view.reasoningText = el("div", "text");
  view.reasoning.append(view.reasoningText);
  view.reasoning.hidden = true;
  view.tools = el("div", "tools");
  view.content = el("div", "content");
  view.meta = el("div", "meta");
  view.meta.hidden = true;
  node.append(view.reasoning, view.tools, view.content, view.meta);
  draw(view);
  return view;
}

function draw(view) {
  const m = view.message;
  if (m.role === "user") return;
  if ((m.reasoning ?? "") !== view.drawnReasoning) {
    view.drawnReasoning = m.reasoning ?? "";
    view.reasoningText.textContent = view.drawnReasoning;
    view.reasoning.hidden = !view.drawnReasoning;
  }
  const calls = m.toolCalls ?? [];
  for (; view.drawnTools < calls.length; view.drawnTools++) {
    const call = calls[view.drawnTools];
    const box = el("div", "tool-call");
    box.append(el("strong", "", `Tool call: ${call.name}`));
    if (call.problem) box.append(el("span", "problem", ` (${call.problem})`));
    box.append(el("pre", "", call.arguments ?? ""));
    view.tools.append(box);
  }
  if (m.content !== view.drawnText) {
    view.drawnText = m.content;
    view.content.innerHTML = renderMarkdown(m.content ?? "");
  }
  if (m.error) {
    view.meta.hidden = false;
    view.meta.className = "meta error";
    view.meta.textContent = m.error;
  } else if (m.stats) {
    view.meta.hidden = false;
    view.meta.className = "meta";
    view.meta.textContent = statsLine(m.stats);
  }
}

function statsLine(s) {
  const parts = [];
  if (s.status && s.status !== "completed") parts.push(s.status);
  parts.push(`${s.tokens ?? 0} tokens`);
  if (s.tokensPerSecond != null) parts.push(`${s.tokensPerSecond.toFixed(1)} tokens/s`);
  if (s.ttftMs != null) parts.push(`first token ${Math.round(s.ttftMs)} ms`);
  if (s.model) parts.push(s.model);
  return parts.join(" · ");
}

function renderLog() {
  log.replaceChildren();
  dirty.clear();
  const conversation = current();
  if (!conversation) return;
  for (const message of conversation.messages) log.append(messageView(message).node);
  log.scrollTop = log.scrollHeight;
}

function renderList() {
  list.replaceChildren();
  for (const c of conversations) {
    const item = el("li", c.id === currentId ? "current" : "");
    const open = el("button", "open", c.title);
    open.type = "button";
    open.title = c.title;
    open.onclick = () => selectConversation(c.id);
    const remove = el("button", "delete", "✕");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete “${c.title}”`);
    remove.onclick = () => deleteConversation(c.id);
    item.append(open, remove);
    list.append(item);
  }
}

function showSide(show) {
  document.body.classList.toggle("show-side", show);
  $("toggle-side").setAttribute("aria-expanded", String(show));
}

function selectConversation(id) {
  stop();
  currentId = id;
  saveConversations();
  renderList();
  renderLog();
  showSide(false);
}

function deleteConversation(id) {
  if (id === currentId) stop();
  conversations = conversations.filter((c) => c.id !== id);
  if (id === currentId) currentId = conversations[0]?.id ?? null;
  saveConversations();
  renderList();
  renderLog();
}

// ---- the connection ------------------------------------------------------

/** The API key (localStorage), sent as ?token=; null: none. */
let apiKey = load(API_KEY, null);
/** @type {RkstreamClient} */
let client;

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

/** A new client (with the current key), connecting. */
function startClient() {
  client?.close();
  client = new RkstreamClient(apiKey ? { apiKey } : {});
  instructionsSent = null;  // a new session: the instructions go again
  const mine = client;
  client.addEventListener("session", (event) => {
    const m = event.detail.model;
    setStatus("connected", `connected · ${m.id}${m.runtime ? " · " + m.runtime : ""}`);
    fillModels();
    if (attached.length && !visionAvailable()) showNotice(NO_VISION);
  });
  client.addEventListener("disconnect", () => setStatus("disconnected", "disconnected"));
  client.addEventListener("reconnecting", (event) => {
    setStatus("disconnected", `disconnected, retrying in ${(event.detail.delayMs / 1000).toFixed(1)} s…`);
    checkAccess(mine);
  });
  client.addEventListener("error", (event) => console.warn("rkstream:", event.detail.message));
  client.connect().catch((error) => {
    if (client === mine && error.code !== "closed") {
      setStatus("disconnected", `not connected: ${error.message}`);
    }
  });
  window.rkstreamChat = { client, ready: true };
}

/** A browser hides why a WebSocket upgrade failed; the same URL over plain HTTP tells
 *  a refused key (401) or page origin (403) from a server that is just away. */
let checking = false;
async function checkAccess(which) {
  if (checking) return;
  checking = true;
  try {
    const url = new URL(which.url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    const answer = await fetch(url, { cache: "no-store" });
    if (which !== client) return;
    if (answer.status === 401) {
      which.close();
      setStatus("disconnected", apiKey ? "refused (401): wrong API key" : "this server needs an API key");
      askForKey(apiKey
        ? "The server refused that API key (401 Unauthorized): it is not one of its keys. Enter the right one."
        : "This server needs an API key (it answered 401 Unauthorized). Enter it to connect; it is kept in this browser.");
    } else if (answer.status === 403) {
      which.close();
      setStatus("disconnected", "refused (403): this page's origin is not allowed");
      showNotice("The server refused the connection (403 Forbidden): it does not allow WebSocket " +
        "connections from this page's address (see server.allowed_origins).");
    }
  } catch {
    // The server is away: the client keeps retrying.
  } finally {
    checking = false;
  }
}

function askForKey(reason) {
  $("key-reason").textContent = reason;
  $("key-dialog").hidden = false;
  const input = $("api-key");
  input.value = "";
  input.focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  apiKey = key;
  save(API_KEY, key);
  $("key-dialog").hidden = true;
  setStatus("connecting", "connecting…");
  startClient();
});

function fillModels() {
  const models = client.models;
  $("model-field").hidden = models.length < 2;
  modelSelect.replaceChildren(...models.map((m) => {
    const option = el("option", "", m.id + (m.loaded === false ? " (not loaded)" : ""));
    option.value = m.id;
    return option;
  }));
  if (models.some((m) => m.id === settings.model)) modelSelect.value = settings.model;
}

// ---- settings ------------------------------------------------------------

const fields = { instructions: $("instructions"), temperature: $("temperature"),
  top_p: $("top-p"), max_tokens: $("max-tokens") };
for (const [key, input] of Object.entries(fields)) {
  input.value = settings[key] ?? "";
  input.addEventListener("input", () => {
    settings[key] = input.value;
    save(SETTINGS, settings);
  });
}
modelSelect.addEventListener("change", () => {
  settings.model = modelSelect.value;
  save(SETTINGS, settings);
});

/** The instructions last sent (null: none, the server's own stay); rkstream.js sends
 *  them again after a reconnect. */
let instructionsSent = null;

async function syncInstructions() {
  const wanted = settings.instructions.trim();
  // Nothing sent yet and nothing wanted: the server's own instructions stay.
  if (instructionsSent === wanted || (instructionsSent === null && !wanted)) return;
  await client.updateSession({ instructions: wanted || null });
  instructionsSent = wanted;
}

function requestParams() {
  const params = {};
  const number = (value) => (value === "" || value == null ? null : Number(value));
  const temperature = number(settings.temperature);
  const topP = number(settings.top_p);
  const maxTokens = number(settings.max_tokens);
  if (temperature !== null && Number.isFinite(temperature)) params.temperature = temperature;
  if (topP !== null && Number.isFinite(topP)) params.top_p = topP;
  if (maxTokens !== null && Number.isInteger(maxTokens) && maxTokens > 0) params.max_tokens = maxTokens;
  return params;
}

// ---- images --------------------------------------------------------------

const NO_VISION = "This server's model has no vision encoder, so it cannot read images. " +
  "Remove the images to send the text alone.";
const FORMATS = { "image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp" };
/** Images picked for the next message: {blob, url}. */
let attached = [];
/** A sent user message's images (in memory only: not kept in localStorage). */
const messageImages = new WeakMap();

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

/** Whether the model a request would use has a vision encoder (unknown: assume so). */
function visionAvailable() {
  if (!client.session) return true;
  const chosen = client.models.length > 1 && settings.model
    ? client.models.find((m) => m.id === settings.model) : null;
  return Boolean((chosen ?? client.session.model)?.vision);
}

function attach(files) {
  let skipped = 0;
  for (const file of files) {
    if (!FORMATS[file.type]) { skipped += 1; continue; }
    attached.push({ blob: file, url: URL.createObjectURL(file) });
  }
  renderAttachments();
  if (skipped) showNotice(`${skipped} file${skipped > 1 ? "s are" : " is"} not a PNG, JPEG or WebP image.`);
  else if (attached.length && !visionAvailable()) showNotice(NO_VISION);
  else showNotice("");
}

function renderAttachments() {
  attachments.replaceChildren(...attached.map((item, index) => {
    const box = el("figure", "thumb");
    const img = el("img");
    img.src = item.url;
    img.alt = item.blob.name || "pasted image";
    const remove = el("button", "remove", "✕");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove image ${item.blob.name || index + 1}`);
    remove.onclick = () => {
      URL.revokeObjectURL(item.url);
      attached.splice(index, 1);
      renderAttachments();
      if (!attached.length) showNotice("");
    };
    box.append(img, remove);
    return box;
  }));
}

$("attach").addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", () => {
  attach([...fileInput.files]);
  fileInput.value = "";
});
prompt.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) {
    event.preventDefault();
    attach(files);
  }
});
const composer = $("form");
composer.addEventListener("dragover", (event) => {
  if (![...event.dataTransfer.types].includes("Files")) return;
  event.preventDefault();
  composer.classList.add("dragging");
});
composer.addEventListener("dragleave", () => composer.classList.remove("dragging"));
composer.addEventListener("drop", (event) => {
  composer.classList.remove("dragging");
  if (!event.dataTransfer.files.length) return;
  event.preventDefault();
  attach([...event.dataTransfer.files]);
});

/** A message as the protocol takes it: images uploaded (binary) and named by id. */
async function toInput(message) {
  const blobs = messageImages.get(message);
  if (message.role !== "user" || !blobs?.length) return { role: message.role, content: message.content };
  const parts = [];
  if (message.content) parts.push({ type: "text", text: message.content });
  for (const blob of blobs) {
    parts.push({ type: "image", image_id: await client.uploadImage(blob, FORMATS[blob.type]) });
  }
  return { role: "user", content: parts };
}

// ---- sending and stopping ------------------------------------------------

/** The answer being streamed: {request, view, conversation}, or null. */
let active = null;

function setBusy(busy) {
  stopButton.disabled = !busy;
  sendButton.disabled = busy;
}

function stop() {
  if (active) active.request.cancel();
}

async function send() {
  const text = prompt.value.trim();
  if ((!text && !attached.length) || active) return;
  if (attached.length && !visionAvailable()) {
    showNotice(NO_VISION);
    return;
  }
  const conversation = current() ?? newConversation();
  prompt.value = "";
  const user = { role: "user", content: text };
  if (attached.length) {
    user.images = attached.length;
    messageImages.set(user, attached.map((item) => item.blob));
    for (const item of attached) URL.revokeObjectURL(item.url);
    attached = [];
    renderAttachments();
  }
  showNotice("");
  conversation.messages.push(user);
  if (conversation.title === "New conversation") conversation.title = text.slice(0, 48) || "Image";
  const answer = { role: "assistant", content: "", reasoning: "", toolCalls: [] };
  conversation.messages.push(answer);
  conversation.updated = Date.now();
  saveConversations();
  renderList();
  log.append(messageView(user).node);
  const view = messageView(answer);
  log.append(view.node);
  log.scrollTop = log.scrollHeight;
  setBusy(true);
  const history = conversation.messages.slice(0, -1)
    .filter((m) => !m.error && (m.content || m.role === "user"));
  const pending = { request: { cancel() { pending.cancelled = true; } }, view, conversation };
  active = pending;
  try {
    if (!client.connected) throw new RkstreamError("not_connected", "not connected to the server");
    await syncInstructions();
    const input = [];
    for (const m of history) input.push(await toInput(m));
    if (pending.cancelled) throw new RkstreamError("cancelled", "stopped");
    const options = { params: requestParams() };
    if (client.models.length > 1 && settings.model) options.model = settings.model;
    const request = client.request(input, options);
    pending.request = request;
    for await (const event of request) {
      if (event.type === "response.output_text.delta") answer.content += event.delta;
      else if (event.type === "response.output_reasoning.delta") answer.reasoning += event.delta;
      else if (event.type === "response.output_tool_call") answer.toolCalls.push(
        { name: event.name, arguments: event.arguments, call_id: event.call_id, problem: event.problem });
      else if (event.type === "response.done") finishAnswer(answer, event);
      else continue;
      schedule(view);
    }
  } catch (error) {
    answer.error = error instanceof RkstreamError && error.code === "cancelled"
      ? "cancelled" : `${error.code ?? "error"}: ${error.message}`;
    if (error.code === "vision_unavailable") {
      answer.error = "vision_unavailable: " + NO_VISION;
      showNotice(NO_VISION);
    }
    schedule(view);
  } finally {
    if (active === pending) active = null;
    setBusy(false);
    conversation.updated = Date.now();
    saveConversations();
  }
}

function finishAnswer(answer, done) {
  const timings = done.timings ?? {};
  answer.stats = {
    status: done.status,
    tokens: done.usage?.output_tokens ?? 0,
    tokensPerSecond: timings.predicted_per_second ?? null,
    ttftMs: timings.ttft_ms ?? null,
    model: done.model,
  };
  if (done.error) answer.error = `${done.status}: ${done.error.message}`;
  if (done.error?.code === "vision_unavailable") {
    answer.error = "vision_unavailable: " + NO_VISION;
    showNotice(NO_VISION);
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && active) {
    event.preventDefault();
    stop();
  }
});
stopButton.addEventListener("click", stop);
$("new-chat").addEventListener("click", () => {
  stop();
  newConversation();
  saveConversations();
  renderList();
  renderLog();
  showSide(false);
  prompt.focus();
});
$("toggle-side").addEventListener("click", () => {
  showSide(!document.body.classList.contains("show-side"));
});

// ---- start ---------------------------------------------------------------

if (!current()) currentId = conversations[0]?.id ?? null;
renderList();
renderLog();
setBusy(false);
startClient();
