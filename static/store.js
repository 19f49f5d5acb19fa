// store.js: what the chat page keeps in localStorage (conversations, settings, the API
// key), and images made small enough to keep there.

export const KEYS = {
  conversations: "rkstream.conversations",
  current: "rkstream.current",
  settings: "rkstream.settings",
  apiKey: "rkstream.apiKey",
};

/** A kept image: its longest side in pixels, and the most characters of its data URL. */
export const KEPT_IMAGE = { side: 512, chars: 160_000 };
/** A camera frame kept with the question it answered: smaller. */
export const KEPT_FRAME = { side: 320, chars: 40_000 };

export function load(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

/** Save ``value`` as JSON; false when the browser refused it (quota, private mode). */
export function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch (error) {
    console.warn("could not save", key, error);
    return false;
  }
}

export function forget(key) {
  try {
    localStorage.removeItem(key);
  } catch {
    // nothing kept, nothing to forget
  }
}

/** The conversations, newest first, and which one is open.
 *  @type {{conversations: {id: string, title: string, updated: number, messages: object[]}[],
 *          currentId: string|null}} */
export const state = { conversations: load(KEYS.conversations, []), currentId: load(KEYS.current, null) };
if (!Array.isArray(state.conversations)) state.conversations = [];

export function current() {
  return state.conversations.find((c) => c.id === state.currentId) ?? null;
}

export function newConversation() {
  const conversation = { id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
    title: "New conversation", updated: Date.now(), messages: [] };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  return conversation;
}

const told = { full: () => {}, dropped: () => {} };

/** What the page is told when the storage is full: ``dropped(messages)`` when those
 *  messages' images were dropped to make room, ``full()`` when the conversations do not
 *  fit even without images (nothing is dropped then). */
export function onStorage({ full, dropped }) {
  Object.assign(told, { full, dropped });
}

/** The conversations as JSON, the messages in ``dropped`` without their kept images. */
function serialized(dropped) {
  return JSON.stringify(state.conversations, (key, value) => {
    if (!dropped.has(value)) return value;
    const copy = { ...value };
    if (Array.isArray(copy.images)) copy.images = copy.images.length;  // "not kept"
    if (copy.frame) {
      copy.frame = { ...copy.frame };
      delete copy.frame.image;
    }
    return copy;
  });
}

function stored(text) {
  try {
    localStorage.setItem(KEYS.conversations, text);
    return true;
  } catch {
    return false;
  }
}

/** Save the conversations; false when they do not fit. When they no longer fit, the
 *  images of the oldest messages are dropped (their messages say so) until they do;
 *  when even that is not enough nothing is dropped and ``whenFull``'s callback runs. */
export function saveConversations() {
  save(KEYS.current, state.currentId);
  if (save(KEYS.conversations, state.conversations)) return true;
  const withImages = [];
  for (const c of [...state.conversations].sort((a, b) => a.updated - b.updated)) {
    for (const m of c.messages) {
      if ((Array.isArray(m.images) && m.images.length) || m.frame?.image) withImages.push(m);
    }
  }
  const dropped = new Set();
  for (const message of withImages) {
    dropped.add(message);
    if (!stored(serialized(dropped))) continue;
    for (const kept of dropped) {  // what was saved is what the page now shows
      if (Array.isArray(kept.images)) kept.images = kept.images.length;
      if (kept.frame) delete kept.frame.image;
    }
    told.dropped([...dropped]);
    return true;
  }
  told.full();
  return false;
}

/**
 * A JPEG data URL of ``blob`` at most ``limits.side`` pixels on its longest side and
 * ``limits.chars`` long (the quality, then the size, goes down until it fits).
 * @param {Blob} blob @param {{side: number, chars: number}} limits
 * @returns {Promise<string|null>} null if the browser cannot decode it
 */
export async function smallImage(blob, limits = KEPT_IMAGE) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    return null;
  }
  let side = limits.side;
  let url = null;
  for (let attempt = 0; attempt < 6; attempt++) {
    const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";  // transparent PNG pixels become white, not black
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    url = canvas.toDataURL("image/jpeg", attempt < 2 ? 0.85 - attempt * 0.2 : 0.6);
    if (url.length <= limits.chars) break;
    if (attempt >= 1) side = Math.round(side * 0.75);
  }
  bitmap.close();
  return url;
}

/** The bytes of a data: URL, as a Blob of its type. @param {string} url */
export function blobOf(url) {
  const comma = url.indexOf(",");
  const type = /^data:([^;,]+)/.exec(url)?.[1] ?? "application/octet-stream";
  const binary = atob(url.slice(comma + 1));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Blob([bytes], { type });
}
