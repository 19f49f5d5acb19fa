// camera.js: the chat page's live camera. The preview comes from getUserMedia; frames
// go to the server as JPEG (canvas.toBlob) with frame.append at a chosen rate, and a
// question with a {type: "frame", stream} part takes the newest one (docs/protocol.md,
// "Images and camera frames"). Nothing is sent while the page is hidden.

/** The most frames kept here, to show the one an answer used. */
const RECENT = 40;
/** Frames wait while this much is still unsent on the socket (a slow link). */
const MAX_BUFFERED = 1 << 20;
/** The longest side of a sent frame, in pixels. */
const MAX_SIDE = 640;

/** Why the camera could not start, in words a person can act on. */
export function cameraProblem(error) {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return "The browser offers the camera only to secure pages: open this page over https " +
      "(rkstream serves https with server.tls_cert and server.tls_key set), or as " +
      "http://localhost (for example through an SSH tunnel to the board).";
  }
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Permission to use the camera was denied. Allow it in the browser's site settings, then try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera was found on this device.";
    case "NotReadableError":
    case "AbortError":
      return "The camera could not be opened: another application may be using it.";
    default:
      return `The camera could not be started: ${error?.message ?? error}`;
  }
}

export class Camera {
  /**
   * @param {HTMLVideoElement} video the preview
   * @param {() => import("./rkstream.js").RkstreamClient} client the current client
   * @param {(text: string) => void} onStatus told what the camera is doing
   */
  constructor(video, client, onStatus) {
    this.video = video;
    this.client = client;
    this.onStatus = onStatus;
    this.stream = "camera";
    this.fps = 2;
    this.quality = 0.7;
    /** @type {MediaStream|null} */ this.media = null;
    this.seq = 0;
    /** Frames sent on the current connection (a question needs one). */
    this.sentOnConnection = 0;
    this.sent = 0;
    this.skipped = 0;
    this.lastBytes = 0;
    /** seq -> {blob, tsMs} of the last frames sent. @type {Map<number, {blob: Blob, tsMs: number}>} */
    this.recent = new Map();
    this._timer = null;
    this._pending = null;  // {stopped} while getUserMedia is asking
    this._busy = false;
    this._canvas = document.createElement("canvas");
    document.addEventListener("visibilitychange", () => this._schedule());
  }

  get on() {
    return this.media !== null;
  }

  get paused() {
    return document.visibilityState === "hidden";
  }

  /** A start waits for getUserMedia (the permission prompt may be open). */
  get starting() {
    return this._pending !== null;
  }

  /** Open the camera and start sending; throws what getUserMedia threw, or an
   * Error "aborted" when stop() came while the browser was still asking. */
  async start() {
    if (this.media || this._pending) return;
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new Error("insecure");
    }
    const ticket = (this._pending = {});
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "environment" },
        audio: false,
      });
    } finally {
      if (this._pending === ticket) this._pending = null;
    }
    if (ticket.stopped) {
      // Turned off while the prompt was open: close what the browser gave us.
      for (const track of media.getTracks()) track.stop();
      throw new Error("aborted");
    }
    this.media = media;
    this.video.srcObject = media;
    await this.video.play().catch(() => {});
    this._schedule();
  }

  /** Stop sending and close the camera. */
  stop() {
    if (this._pending) this._pending.stopped = true;
    this._pending = null;
    clearTimeout(this._timer);
    this._timer = null;
    for (const track of this.media?.getTracks() ?? []) track.stop();
    this.media = null;
    this.video.srcObject = null;
    this.recent.clear();
    this.onStatus("");
  }

  /** A new connection has no frames of ours yet. */
  reconnected() {
    this.sentOnConnection = 0;
  }

  /** The frame ``seq`` if it is still here, else the newest. */
  frame(seq) {
    return this.recent.get(seq) ?? [...this.recent.values()].at(-1) ?? null;
  }

  _schedule() {
    clearTimeout(this._timer);
    this._timer = null;
    if (!this.media) return;
    if (this.paused) {
      this.onStatus(`paused while the page is hidden · ${this.sent} frames sent`);
      return;
    }
    this._timer = setTimeout(() => this._tick(), 1000 / this.fps);
  }

  async _tick() {
    this._timer = null;
    if (!this.media || this.paused) return;
    const started = performance.now();
    try {
      await this._send();
    } catch (error) {
      console.warn("camera frame:", error);
    }
    if (!this.media || this.paused) return this._schedule();
    const wait = Math.max(0, 1000 / this.fps - (performance.now() - started));
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._tick(), wait);
  }

  async _send() {
    const client = this.client();
    const video = this.video;
    if (!client?.connected || !video.videoWidth || this._busy) return;
    if (client.ws && client.ws.bufferedAmount > MAX_BUFFERED) {
      this.skipped += 1;
      return;
    }
    this._busy = true;
    try {
      const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
      const canvas = this._canvas;
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      const tsMs = Date.now();
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", this.quality));
      if (!blob || !this.media || this.paused || client !== this.client() || !client.connected) return;
      const seq = ++this.seq;
      await client.appendFrame(this.stream, seq, blob, { tsNs: tsMs * 1e6, format: "jpeg" });
      this.sent += 1;
      this.sentOnConnection += 1;
      this.lastBytes = blob.size;
      this.recent.set(seq, { blob, tsMs });
      if (this.recent.size > RECENT) this.recent.delete(this.recent.keys().next().value);
      this.onStatus(`sending ${this.fps} fps · frame #${seq} · ${Math.round(blob.size / 1024)} KB` +
        (this.skipped ? ` · ${this.skipped} held back (slow link)` : ""));
    } finally {
      this._busy = false;
    }
  }
}
