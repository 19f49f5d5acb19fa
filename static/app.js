// app.js: the chat page (index.html) on the rkstream.js client. No build step.
// render.js draws messages (Markdown through DOMPurify, once per animation frame),
// store.js keeps conversations, settings and the API key in localStorage, camera.js
// sends live camera frames, attachments.js holds the images picked for the next
// message, conversations.js lists the conversations and copy.js copies answers.

import { RkstreamClient, RkstreamError } from "./rkstream.js";
import { Attachments, FORMATS } from "./attachments.js";
import { Camera, cameraProblem } from "./camera.js";
import { ConversationList, button } from "./conversations.js";
import { copyText } from "./copy.js";
import {
  clearScheduled, draw, editKeys, el, messageView, renderStats, schedule, setScroller,
  setThumbs,
} from "./render.js";
import {
  KEPT_FRAME, KEYS, blobOf, current, forget, load, newConversation, save, saveConversations,
  onStorage, smallImage, state,
} from "./store.js";

const $ = (id) => document.getElementById(id);
const log = $("log");
const statusEl = $("status");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const list = $("conversations");
const modelSelect = $("model");
const notice = $("notice");
setScroller(log);

const settings = { instructions: "", temperature: "", top_p: "", max_tokens: "", model: "",
  camera_fps: 2, camera_quality: 0.7, ...load(KEYS.settings, {}) };

// ---- the log -------------------------------------------------------------

/** The views of the open conversation's messages, in order. */
let views = [];
/** A sent message's images as Blobs (in memory, for this page); the kept small copies
 *  (message.images, data URLs) stand in for them after a reload. */
const messageImages = new WeakMap();
/** The camera frame a question was answered about (in memory; kept small as
 *  message.frame.image). */
const frameImages = new WeakMap();

/** A user message's images to show: {url, alt}, the camera frame last. */
function thumbsOf(message) {
  const blobs = messageImages.get(message);
  const urls = blobs?.length ? blobs.map((blob) => urlOf(blob))
    : Array.isArray(message.images) ? message.images : [];
  const thumbs = urls.map((url) => ({ url, alt: "attached image" }));
  const frame = frameImages.has(message) ? urlOf(frameImages.get(message)) : message.frame?.image;
  if (frame) thumbs.push({ url: frame, alt: "the camera frame the model saw" });
  return thumbs;
}

const blobUrls = new WeakMap();
function urlOf(blob) {
  if (!blobUrls.has(blob)) blobUrls.set(blob, URL.createObjectURL(blob));
  return blobUrls.get(blob);
}

function addView(message) {
  const view = messageView(message, message.role === "user" ? thumbsOf(message) : []);
  views.push(view);
  log.append(view.node);
  return view;
}

function renderLog() {
  log.replaceChildren();
  clearScheduled();
  views = [];
  for (const message of current()?.messages ?? []) addView(message);
  updateActions();
  log.scrollTop = log.scrollHeight;
}

/** The controls under messages: Copy on every answer; Regenerate on the last answer
 *  and Edit on the last question, while nothing streams. */
function updateActions() {
  const lastUser = views.findLastIndex((v) => v.message.role === "user");
  views.forEach((view, index) => {
    const m = view.message;
    const buttons = [];
    if (m.role === "assistant" && !(active && active.view === view)) {
      buttons.push(button("Copy", "Copy this answer", (event) => copyText(m.content ?? "", event.currentTarget)));
      if (index === views.length - 1 && index > 0 && !active) {
        buttons.push(button("Regenerate", "Regenerate this answer", regenerate));
      }
    }
    if (m.role === "user" && index === lastUser && !active && !view.editing) {
      buttons.push(button("Edit", "Edit and resend this message", () => editLast(view)));
    }
    view.actions.replaceChildren(...buttons);
  });
}

// ---- conversations -------------------------------------------------------

const conversationList = new ConversationList(list, {
  open: (id) => selectConversation(id),
  remove: (id) => deleteConversation(id),
});
const renderList = () => conversationList.render();

function showSide(show) {
  document.body.classList.toggle("show-side", show);
  $("toggle-side").setAttribute("aria-expanded", String(show));
}

function selectConversation(id) {
  stop();
  state.currentId = id;
  saveConversations();
  renderList();
  renderLog();
  showSide(false);
}

function deleteConversation(id) {
  if (id === state.currentId) stop();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (id === state.currentId) state.currentId = state.conversations[0]?.id ?? null;
  saveConversations();
  renderList();
  renderLog();
}

// ---- the connection ------------------------------------------------------

/** The API key (localStorage), sent as ?token=; null: none. */
let apiKey = load(KEYS.apiKey, null);
/** @type {RkstreamClient} */
let client;

function setStatus(state_, text) {
  statusEl.dataset.state = state_;
  statusEl.textContent = text;
}

/** A new client (with the current key), connecting. */
function startClient() {
  client?.close();
  client = new RkstreamClient(apiKey ? { apiKey } : {});
  instructionsSent = null;  // a new session: the instructions go again
  $("key-field").hidden = !apiKey;
  const mine = client;
  client.addEventListener("session", (event) => {
    const m = event.detail.model;
    setStatus("connected", `connected · ${m.id}${m.runtime ? " · " + m.runtime : ""}`);
    fillModels();
    camera.reconnected();
    if (attached.length && !visionAvailable()) showNotice(NO_VISION);
    if (camera.on && !visionAvailable()) cameraOff(NO_VISION_CAMERA);
  });
  client.addEventListener("disconnect", () => setStatus("disconnected", "disconnected"));
  client.addEventListener("reconnecting", (event) => {
    setStatus("disconnected", `disconnected, retrying in ${(event.detail.delayMs / 1000).toFixed(1)} s…`);
    checkAccess(mine);
  });
  client.addEventListener("error", (event) => {
    const error = event.detail;
    console.warn("rkstream:", error.message);
    // A frame the server cannot take: say why and stop sending.
    if (camera.on && error.code === "vision_unavailable") cameraOff(NO_VISION_CAMERA);
    else if (camera.on && error.code) showCameraStatus(`the server refused a frame: ${error.message}`);
  });
  client.connect().catch((error) => {
    if (client === mine && error.code !== "closed") {
      setStatus("disconnected", `not connected: ${error.message}`);
    }
  });
  window.rkstreamChat = { client, ready: true, render: renderStats, camera };
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
  save(KEYS.apiKey, key);
  $("key-dialog").hidden = true;
  setStatus("connecting", "connecting…");
  startClient();
});

$("forget-key").addEventListener("click", () => {
  forget(KEYS.apiKey);
  apiKey = null;
  setStatus("connecting", "API key forgotten; connecting without one…");
  startClient();  // a server that needs a key then asks for it
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
    save(KEYS.settings, settings);
  });
}
modelSelect.addEventListener("change", () => {
  settings.model = modelSelect.value;
  save(KEYS.settings, settings);
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
const NO_VISION_CAMERA = "This server's model has no vision encoder, so it cannot see the " +
  "camera: the camera stays off.";
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

const attached = new Attachments(
  { box: $("attachments"), input: $("file"), button: $("attach"), prompt, composer: $("form") },
  (count, skipped) => {
    if (skipped) showNotice(`${skipped} file${skipped > 1 ? "s are" : " is"} not a PNG, JPEG or WebP image.`);
    else if (count && !visionAvailable()) showNotice(NO_VISION);
    else showNotice("");
  });

onStorage({
  full: () => showNotice(
    "This browser's storage for the page is full: the conversations are not being kept " +
    "over a reload. Delete some old conversations (✕ in the list) to make room."),
  dropped: (messages) => {  // their labels now say "not kept over a reload"
    for (const view of views.filter((v) => messages.includes(v.message))) {
      setThumbs(view, thumbsOf(view.message));
    }
  },
});

/** Keep small copies of a message's images, so they come back after a reload. */
async function keepImages(message, blobs) {
  const urls = (await Promise.all(blobs.map((blob) => smallImage(blob)))).filter(Boolean);
  message.images = urls.length ? urls : blobs.length;
  saveConversations();
  // Until now its label said "not kept over a reload".
  const view = views.find((v) => v.message === message);
  if (view) setThumbs(view, thumbsOf(message));
}

/** A message as the protocol takes it: images uploaded (binary) and named by id. A
 *  camera question being answered takes the camera's newest frame while the camera is
 *  on, or else the frame it was asked about (kept small); earlier questions keep their
 *  attached images but not their camera frames. */
async function toInput(message, last) {
  if (message.role !== "user") return { role: message.role, content: message.content };
  const blobs = [...(messageImages.get(message)
    ?? (Array.isArray(message.images) ? message.images.map(blobOf) : []))];
  let frame = null;
  if (message.frame && last) {
    if (camera.on) frame = { type: "frame", stream: camera.stream };
    else {
      const seen = frameImages.get(message) ?? (message.frame.image && blobOf(message.frame.image));
      if (seen) blobs.push(seen);
    }
  }
  if (!blobs.length && !frame) return { role: "user", content: message.content };
  const parts = [];
  if (message.content) parts.push({ type: "text", text: message.content });
  for (const blob of blobs) {
    parts.push({ type: "image", image_id: await client.uploadImage(blob, FORMATS[blob.type]) });
  }
  if (frame) parts.push(frame);
  return { role: "user", content: parts };
}

// ---- the camera ------------------------------------------------------------

const cameraPanel = $("camera");
const cameraToggle = $("camera-toggle");
const cameraAsk = $("camera-ask");
const DEFAULT_CAMERA_QUESTION = "What do you see?";
const camera = new Camera($("camera-video"), () => client, showCameraStatus);
camera.fps = Math.min(10, Math.max(1, Number(settings.camera_fps) || 2));
camera.quality = Math.min(0.95, Math.max(0.3, Number(settings.camera_quality) || 0.7));

function showCameraStatus(text) {
  $("camera-status").textContent = text;
  cameraAsk.disabled = !camera.on || !camera.sentOnConnection || Boolean(active);
}

function syncCameraControls() {
  $("camera-fps").value = String(camera.fps);
  $("camera-fps-value").textContent = String(camera.fps);
  $("camera-quality").value = String(camera.quality);
  $("camera-quality-value").textContent = camera.quality.toFixed(2);
}
syncCameraControls();
$("camera-fps").addEventListener("input", (event) => {
  camera.fps = Number(event.target.value);
  settings.camera_fps = camera.fps;
  save(KEYS.settings, settings);
  syncCameraControls();
});
$("camera-quality").addEventListener("input", (event) => {
  camera.quality = Number(event.target.value);
  settings.camera_quality = camera.quality;
  save(KEYS.settings, settings);
  syncCameraControls();
});

async function cameraOn() {
  if (!visionAvailable()) {
    showNotice(NO_VISION_CAMERA);
    return;
  }
  showNotice("");
  cameraPanel.hidden = false;
  cameraToggle.setAttribute("aria-pressed", "true");
  showCameraStatus("starting the camera…");
  try {
    await camera.start();
    showCameraStatus("waiting for the first frame…");
    prompt.placeholder = "Ask about what the camera sees (Enter sends with the newest frame)";
  } catch (error) {
    if (error.message !== "aborted") cameraOff(cameraProblem(error));  // else: turned off
  }
}

function cameraOff(reason = "") {
  camera.stop();
  cameraPanel.hidden = true;
  cameraToggle.setAttribute("aria-pressed", "false");
  prompt.placeholder = "Ask something (Enter sends, Shift+Enter for a new line, Esc stops)";
  showNotice(reason);
}

cameraToggle.addEventListener("click",
  () => (camera.on || camera.starting ? cameraOff() : cameraOn()));
$("camera-off").addEventListener("click", () => cameraOff());
cameraAsk.addEventListener("click", () => send());

// ---- sending, regenerating, editing, stopping ------------------------------

/** The answer being streamed: {request, view, conversation}, or null. */
let active = null;

function setBusy(busy) {
  stopButton.disabled = !busy;
  sendButton.disabled = busy;
  showCameraStatus($("camera-status").textContent);
  updateActions();
}

function stop() {
  if (active) active.request.cancel();
}

async function send() {
  const withFrame = camera.on;
  const text = prompt.value.trim() || (withFrame ? DEFAULT_CAMERA_QUESTION : "");
  if ((!text && !attached.length) || active) return;
  if ((attached.length || withFrame) && !visionAvailable()) {
    showNotice(withFrame ? NO_VISION_CAMERA : NO_VISION);
    return;
  }
  if (withFrame && !camera.sentOnConnection) {
    showNotice("The camera has not sent a frame yet; ask again in a moment.");
    return;
  }
  const conversation = current() ?? newConversation();
  prompt.value = "";
  const user = { role: "user", content: text };
  if (withFrame) user.frame = { stream: camera.stream };
  const blobs = attached.take();
  if (blobs.length) {
    messageImages.set(user, blobs);
    user.images = blobs.length;
  }
  showNotice("");
  conversation.messages.push(user);
  if (conversation.title === "New conversation") conversation.title = text.slice(0, 48) || "Image";
  renderList();
  addView(user);
  if (blobs.length) keepImages(user, blobs);
  await respond(conversation);
}

/** Answer the last question again. */
async function regenerate() {
  const conversation = current();
  if (active || !conversation || conversation.messages.at(-1)?.role !== "assistant") return;
  conversation.messages.pop();
  views.pop().node.remove();
  await respond(conversation);
}

/** Edit the last question in place; Send (or Enter) asks it again, Cancel (or Esc) leaves it. */
function editLast(view) {
  if (active) return;
  view.editing = true;
  updateActions();
  const box = el("textarea", "edit");
  box.value = view.message.content;
  box.rows = Math.min(8, box.value.split("\n").length + 1);
  box.setAttribute("aria-label", "Edit the message");
  const resend = button("Send", "Send the edited message", () => finish(true));
  const cancel = button("Cancel", "Cancel the edit", () => finish(false));
  const row = el("div", "actions");
  row.append(resend, cancel);
  const finish = async (keep) => {
    if (!view.editing) return;
    view.editing = false;
    box.remove();
    row.remove();
    view.text.hidden = false;
    const text = box.value.trim();
    const conversation = current();
    if (!keep || active || !conversation || (!text && !thumbsOf(view.message).length)) {
      updateActions();
      return;
    }
    view.message.content = text;
    draw(view);
    const at = conversation.messages.indexOf(view.message);
    conversation.messages.splice(at + 1);
    for (const later of views.splice(views.indexOf(view) + 1)) later.node.remove();
    await respond(conversation);
  };
  editKeys(box, finish);
  view.text.hidden = true;
  view.text.after(box, row);
  box.focus();
}

/** Stream an answer to the conversation's last question. */
async function respond(conversation) {
  const answer = { role: "assistant", content: "", reasoning: "", toolCalls: [], waiting: "sending…" };
  conversation.messages.push(answer);
  conversation.updated = Date.now();
  saveConversations();
  const view = addView(answer);
  log.scrollTop = log.scrollHeight;
  const history = conversation.messages.slice(0, -1)
    .filter((m) => !m.error && (m.content || m.role === "user"));
  const question = history.at(-1);
  const pending = { request: { cancel() { pending.cancelled = true; } }, view, conversation };
  active = pending;
  setBusy(true);
  try {
    if (!client.connected) throw new RkstreamError("not_connected", "not connected to the server");
    await syncInstructions();
    const input = [];
    for (const m of history) input.push(await toInput(m, m === question));
    if (pending.cancelled) throw new RkstreamError("cancelled", "stopped");
    const options = { params: requestParams() };
    if (client.models.length > 1 && settings.model) options.model = settings.model;
    // Images (attached, or the camera's frame) are read first once the request runs.
    const withImages = input.some((m) => Array.isArray(m.content)
      && m.content.some((part) => part.type === "image" || part.type === "frame"));
    const request = client.request(input, options);
    pending.request = request;
    for await (const event of request) {
      switch (event.type) {
        case "response.created":
        case "response.queued":
          answer.waiting = event.queue_position > 0
            ? `waiting, ${event.queue_position} ahead` : "next";
          break;
        case "response.started":
          answer.waiting = withImages ? "reading the image…" : "prefilling…";
          break;
        case "model.loading":
          answer.waiting = `loading the model ${event.model}…` +
            (event.queue_position > 0 ? ` (${event.queue_position} loads ahead)` : "");
          break;
        case "model.loaded":
          answer.waiting = `the model ${event.model} is loaded, starting…`;
          break;
        case "response.output_text.delta":
          answer.waiting = "";
          answer.content += event.delta;
          break;
        case "response.output_reasoning.delta":
          answer.waiting = "";
          answer.reasoning += event.delta;
          break;
        case "response.output_tool_call":
          answer.waiting = "";
          answer.toolCalls.push({ name: event.name, arguments: event.arguments,
            call_id: event.call_id, problem: event.problem });
          break;
        case "response.done":
          answer.waiting = "";
          finishAnswer(answer, event, question);
          break;
        default:
          continue;
      }
      schedule(view);
    }
  } catch (error) {
    answer.waiting = "";
    answer.error = error instanceof RkstreamError && error.code === "cancelled"
      ? "cancelled" : `${error.code ?? "error"}: ${error.message}`;
    if (error.code === "vision_unavailable") {
      answer.error = "vision_unavailable: " + NO_VISION;
      showNotice(NO_VISION);
    }
    schedule(view);
  } finally {
    delete answer.waiting;
    if (active === pending) active = null;
    setBusy(false);
    conversation.updated = Date.now();
    saveConversations();
  }
}

function finishAnswer(answer, done, question) {
  const timings = done.timings ?? {};
  answer.stats = {
    status: done.status,
    tokens: done.usage?.output_tokens ?? 0,
    tokensPerSecond: timings.predicted_per_second ?? null,
    ttftMs: timings.ttft_ms ?? null,
    model: done.model,
  };
  if (done.frame) {
    const f = done.frame;
    // age_ms: the server's own measure, from the frame's arrival to the prefill.
    answer.stats.frame = { seq: f.seq, encodedSeq: f.encoded_seq, superseded: f.superseded,
      unchanged: f.unchanged ?? 0, ageMs: f.age_ms ?? null };
    const seen = camera.frame(f.encoded_seq ?? f.seq);
    if (question && seen) {
      frameImages.set(question, seen.blob);
      const view = views.find((v) => v.message === question);
      if (view) setThumbs(view, thumbsOf(question));
      smallImage(seen.blob, KEPT_FRAME).then((url) => {
        if (url && question.frame) question.frame.image = url;
        saveConversations();
      });
    }
  }
  if (done.error) answer.error = `${done.status}: ${done.error.message}`;
  if (done.error?.code === "vision_unavailable") {
    answer.error = "vision_unavailable: " + NO_VISION;
    showNotice(NO_VISION);
  }
}

// ---- keys and buttons ------------------------------------------------------

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

if (!current()) state.currentId = state.conversations[0]?.id ?? null;
renderList();
renderLog();
setBusy(false);
startClient();
