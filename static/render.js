// render.js: the chat page's messages. Answers are Markdown (marked), sanitised by
// DOMPurify (model output is untrusted), and a streamed answer is redrawn at most once
// per animation frame however many deltas arrive.

import { marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";

// Links in answers open in a new tab, without a handle on this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text));
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** How the drawing keeps up (read by the browser test): changes asked for, animation
 *  frames that drew, answers redrawn, the time spent drawing (ms), and when the first
 *  change was asked for and the last frame drew (performance.now()). */
export const renderStats = { scheduled: 0, flushes: 0, draws: 0, drawMs: 0, maxFlushMs: 0,
  firstAt: null, lastFlushAt: null, pending: 0 };

/** The most characters of finished Markdown blocks drawn in one frame. */
const FRAME_CHARS = 4000;

/** Views whose message changed since the last frame. */
const dirty = new Set();
let frame = 0;
/** The scrolling element that follows the newest text. @type {HTMLElement|null} */
let scroller = null;

export function setScroller(node) {
  scroller = node;
}

/** Redraw ``view`` at the next animation frame. */
export function schedule(view) {
  renderStats.scheduled += 1;
  renderStats.firstAt ??= performance.now();
  dirty.add(view);
  renderStats.pending = dirty.size;
  if (!frame) frame = requestAnimationFrame(flush);
}

export function clearScheduled() {
  dirty.clear();
  renderStats.pending = 0;
}

function flush() {
  frame = 0;
  const started = performance.now();
  const stick = scroller && scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const views = [...dirty];
  dirty.clear();
  for (const view of views) draw(view);  // a view behind (see drawContent) asks again
  renderStats.pending = dirty.size;
  if (stick) scroller.scrollTop = scroller.scrollHeight;
  renderStats.lastFlushAt = performance.now();
  const ms = renderStats.lastFlushAt - started;
  renderStats.flushes += 1;
  renderStats.drawMs += ms;
  renderStats.maxFlushMs = Math.max(renderStats.maxFlushMs, ms);
}

/**
 * A message's element, with what it needs to be redrawn.
 * @param {object} message {role, content, ...}
 * @param {{url: string, alt: string}[]} thumbs images to show under a user's message
 */
export function messageView(message, thumbs = []) {
  const node = el("div", `msg ${message.role}`);
  const view = { message, node, drawnText: null, drawnReasoning: null, drawnTools: 0 };
  view.actions = el("div", "actions");
  if (message.role === "user") {
    view.text = el("div", "text", message.content);  // the user's own text, as written
    view.thumbs = el("div", "thumbs");
    view.meta = el("div", "meta");
    node.append(view.text, view.thumbs, view.meta, view.actions);
    setThumbs(view, thumbs);
    return view;
  }
  view.waiting = el("div", "waiting");
  view.waiting.setAttribute("role", "status");
  view.reasoning = el("details", "reasoning");
  view.reasoning.append(el("summary", "", "Reasoning"));
  view.reasoningText = el("div", "text");
  view.reasoning.append(view.reasoningText);
  view.reasoning.hidden = true;
  view.tools = el("div", "tools");
  view.content = el("div", "content");
  view.tail = el("div", "tail");  // the block still being written (see drawContent)
  view.content.append(view.tail);
  view.doneText = "";
  view.meta = el("div", "meta");
  view.meta.hidden = true;
  node.append(view.waiting, view.reasoning, view.tools, view.content, view.meta, view.actions);
  draw(view);
  return view;
}

/** Keys of an edit in place: Enter (not Shift+Enter, not while composing) keeps it,
 *  Esc leaves it; ``finish(keep)`` does either. Esc goes no further (it also stops
 *  an answer). */
export function editKeys(input, finish) {
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false);
    }
  });
}

/** Show a user message's images (``thumbs``: {url, alt}) and what is known of them. */
export function setThumbs(view, thumbs) {
  const m = view.message;
  view.thumbs.replaceChildren(...thumbs.map(({ url, alt }) => {
    const img = el("img");
    img.src = url;
    img.alt = alt;
    return img;
  }));
  view.thumbs.hidden = !thumbs.length;
  const notes = [];
  if (m.frame) notes.push("asked about the live camera");
  if (typeof m.images === "number" && m.images) {
    notes.push(`${m.images} image${m.images > 1 ? "s" : ""}, not kept over a reload`);
  }
  view.meta.textContent = notes.join(" · ");
  view.meta.hidden = !notes.length;
}

export function draw(view) {
  const m = view.message;
  if (m.role === "user") {
    view.text.textContent = m.content;
    return;
  }
  renderStats.draws += 1;
  view.waiting.textContent = m.waiting ?? "";
  view.waiting.hidden = !m.waiting;
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
    drawContent(view, m.content ?? "");
  }
  if (m.error) {
    view.meta.hidden = false;
    view.meta.className = "meta error";
    view.meta.textContent = m.error;
  } else if (m.stats) {
    view.meta.hidden = false;
    view.meta.className = "meta";
    view.meta.textContent = statsLine(m.stats);
  } else {
    view.meta.hidden = true;
  }
}

/**
 * Draw an answer's Markdown without parsing it all again on every frame: the top-level
 * blocks before the last one are done (their text cannot change as more is appended), so
 * each is rendered once and kept; only the last block is drawn again. A long answer then
 * costs the same per frame as a short one.
 */
function drawContent(view, text) {
  text = text.replace(/\r\n?/g, "\n");
  if (!text.startsWith(view.doneText)) {  // not an extension of what was drawn: start over
    for (const node of [...view.content.childNodes]) if (node !== view.tail) node.remove();
    view.doneText = "";
  }
  const rest = text.slice(view.doneText.length);
  const tokens = marked.lexer(rest);
  let last = tokens.length - 1;
  while (last > 0 && tokens[last].type === "space") last -= 1;
  // At most FRAME_CHARS of finished blocks a frame, so that a burst (a fast model, a
  // slow phone) is drawn over several frames instead of freezing the page in one.
  let done = "";
  let behind = false;
  for (let i = 0; i < last; i++) {
    if (done && done.length + tokens[i].raw.length > FRAME_CHARS) { behind = true; break; }
    done += tokens[i].raw;
  }
  if (done && rest.startsWith(done)) {
    view.tail.insertAdjacentHTML("beforebegin", renderMarkdown(done));
    view.doneText += done;
  }
  if (behind) {
    view.tail.replaceChildren();  // the rest comes in the next frames
    view.drawnText = null;
    schedule(view);
    return;
  }
  view.tail.innerHTML = renderMarkdown(text.slice(view.doneText.length));
}

export function statsLine(s) {
  const parts = [];
  if (s.status && s.status !== "completed") parts.push(s.status);
  parts.push(`${s.tokens ?? 0} tokens`);
  if (s.tokensPerSecond != null) parts.push(`${s.tokensPerSecond.toFixed(1)} tokens/s`);
  if (s.ttftMs != null) parts.push(`first token ${Math.round(s.ttftMs)} ms`);
  if (s.model) parts.push(s.model);
  if (s.frame) parts.push(frameLine(s.frame));
  return parts.join(" · ");
}

/** Which camera frame an answer used (response.done.frame) and how old it was. */
function frameLine(f) {
  let line = `frame #${f.seq}`;
  if (f.encodedSeq != null && f.encodedSeq !== f.seq) {
    line += ` (the model saw #${f.encodedSeq}: ${f.unchanged} newer unchanged)`;
  } else if (f.encodedSeq == null) {
    line += " (not encoded)";
  }
  if (f.ageMs != null) line += `, ${(f.ageMs / 1000).toFixed(2)} s old`;
  line += `, ${f.superseded} superseded`;
  return line;
}
