// rkstream.js: a browser client of rkstream's WebSocket protocol v1 (docs/protocol.md),
// over msgpack (the vendored @msgpack/msgpack). An ES module, no build step:
//
//   import { RkstreamClient } from "/static/rkstream.js";
//   const client = new RkstreamClient();            // ws(s)://<this page's host>/ws
//   const session = await client.connect();         // the session.created event
//   const reply = client.request([{ role: "user", content: "Hello" }]);
//   for await (const event of reply) {
//     if (event.type === "response.output_text.delta") out.textContent += event.delta;
//   }
//
// Events are the server's own (protocol.md, "Server events"), with their snake_case
// fields; only `error` bodies become RkstreamError objects.

import { Decoder, Encoder } from "./vendor/msgpack/index.mjs";

export const SUBPROTOCOL = "rkstream.v1+msgpack";

/** A protocol error (protocol.md, "Errors"), or a client one: `connection_lost`
 * (the socket closed while the request was open), `not_connected`, `closed`. */
export class RkstreamError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{param?: string|null, type?: string, eventId?: string, requestId?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "RkstreamError";
    /** @type {string} */ this.code = code;
    /** @type {string|null} */ this.param = extra.param ?? null;
    /** @type {string} */ this.type = extra.type ?? "client_error";
    /** @type {string|undefined} */ this.eventId = extra.eventId;
    /** @type {string|undefined} */ this.requestId = extra.requestId;
  }

  /** @param {{code: string, message: string, type?: string, param?: string, event_id?: string}} body
   *  @param {string} [requestId] */
  static fromBody(body, requestId) {
    return new RkstreamError(body.code, body.message,
      { param: body.param, type: body.type, eventId: body.event_id, requestId });
  }
}

const encoder = new Encoder({ useBigInt64: true, ignoreUndefined: true });
const decoder = new Decoder();

/** One request's events, in order, as an async iterator; see RkstreamClient.request. */
export class RkstreamRequest {
  /** @param {RkstreamClient} client @param {string} id */
  constructor(client, id) {
    this.client = client;
    /** The request_id. @type {string} */ this.id = id;
    /** The text deltas so far, joined. */ this.text = "";
    /** The reasoning deltas so far, joined. */ this.reasoning = "";
    /** The tool calls so far (response.output_tool_call events). @type {object[]} */
    this.toolCalls = [];
    /** Requests waiting ahead of it (response.created, then response.queued); 0 = next.
     *  @type {number|null} */
    this.queuePosition = null;
    /** It holds a model instance (response.started): reading images, prefilling, answering. */
    this.started = false;
    this.finished = false;
    /** @type {object[]} */ this._queue = [];
    /** Pending next() calls, answered in turn. @type {{resolve: Function, reject: Function}[]} */
    this._waiters = [];
    /** @type {RkstreamError|null} */ this._failure = null;
    /** Resolves with the response.done event (any status); rejects with an
     *  RkstreamError when the request never got one (connection_lost, not_connected).
     *  @type {Promise<object>} */
    this.done = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.done.catch(() => {});  // a caller that never looks is not an unhandled rejection
  }

  /** Ask the server to stop this request; it ends with status `cancelled`. */
  cancel() {
    if (!this.finished) this.client._send({ type: "response.cancel", request_id: this.id }, false);
  }

  /** The whole answer once done. Rejects with an RkstreamError when the request
   *  failed (its `error`) or never finished (connection_lost).
   *  @returns {Promise<{text: string, reasoning: string, toolCalls: object[], done: any}>} */
  async result() {
    const done = await this.done;
    if (done.status === "failed") throw done.error;
    return { text: done.text ?? this.text, reasoning: done.reasoning ?? this.reasoning,
      toolCalls: done.tool_calls ?? this.toolCalls, done };
  }

  _push(event) {
    if (this.finished) return;
    if (event.type === "response.output_text.delta") this.text += event.delta;
    else if (event.type === "response.output_reasoning.delta") this.reasoning += event.delta;
    else if (event.type === "response.output_tool_call") this.toolCalls.push(event);
    else if (event.type === "response.created" || event.type === "response.queued") {
      this.queuePosition = event.queue_position;
    } else if (event.type === "response.started") this.started = true;
    if (event.type === "error" || (event.type === "response.done" && event.error)) {
      const body = event.error;
      event = { ...event, error: RkstreamError.fromBody(body, this.id) };
    }
    if (event.type === "response.done") {
      this.finished = true;
      this._resolve(event);
    }
    this._deliver({ value: event, done: false });
  }

  /** @param {RkstreamError} error */
  _fail(error) {
    if (this.finished) return;
    this.finished = true;
    this._failure = error;
    this._reject(error);
    this._deliver(null);
  }

  _deliver(item) {
    if (item) this._queue.push(item);
    while (this._waiters.length && (this._queue.length || this.finished)) {
      const { resolve, reject } = this._waiters.shift();
      this._next().then(resolve, reject);
    }
  }

  async _next() {
    if (this._queue.length) return this._queue.shift();
    if (this._failure) throw this._failure;
    if (this.finished) return { value: undefined, done: true };
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Every event of this request, ending after its response.done. Throws an
   *  RkstreamError (code `connection_lost`) if the socket closed first. */
  [Symbol.asyncIterator]() {
    return { next: () => this._next(), [Symbol.asyncIterator]() { return this; } };
  }
}

/** A client of one rkstream server: one WebSocket, reconnected with backoff.
 *  Dispatches `session` (detail: session.created, on every connect), `disconnect`
 *  (detail: {code, reason}), `reconnecting` (detail: {attempt, delayMs}) and `error`
 *  (detail: an RkstreamError that belongs to no request or call, e.g. a frame's). */
export class RkstreamClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the /ws URL; by default the page's own server
   * @param {string} [options.apiKey] sent as ?token= (browsers cannot set headers)
   * @param {boolean} [options.reconnect] reconnect after a drop (default true)
   * @param {number} [options.minDelayMs] first reconnect delay (default 250)
   * @param {number} [options.maxDelayMs] the cap of the doubling delay (default 10000)
   */
  constructor(options = {}) {
    super();
    const origin = globalThis.location;
    let url = options.url ?? `${origin.protocol === "https:" ? "wss:" : "ws:"}//${origin.host}/ws`;
    if (options.apiKey) {
      const withKey = new URL(url);
      withKey.searchParams.set("token", options.apiKey);
      url = withKey.toString();
    }
    this.url = url;
    this.reconnect = options.reconnect ?? true;
    this.minDelayMs = options.minDelayMs ?? 250;
    this.maxDelayMs = options.maxDelayMs ?? 10000;
    /** The last session.created event, or null before the first. @type {any} */
    this.session = null;
    /** @type {WebSocket|null} */ this.ws = null;
    this.attempt = 0;
    this._closed = false;
    this._timer = null;
    this._counter = 0;
    /** @type {Map<string, RkstreamRequest>} */ this._requests = new Map();
    /** Calls waiting for an answer: key -> {resolve, reject, eventId}. */
    this._calls = new Map();
    /** Session settings given to updateSession, sent again after a reconnect. */
    this._wanted = null;
    this._opened = null;
  }

  /** The served models (session.created.models), the default first. @returns {object[]} */
  get models() { return this.session?.models ?? []; }

  /** True while the socket is open and session.created has arrived. */
  get connected() { return this.ws?.readyState === WebSocket.OPEN && this.session !== null; }

  /** Open the socket (retrying with backoff while `reconnect` is on).
   *  @returns {Promise<any>} the session.created event */
  connect() {
    this._closed = false;
    if (this.connected) return Promise.resolve(this.session);
    if (!this._opened) {
      this._opened = new Promise((resolve, reject) => { this._onOpen = resolve; this._onGiveUp = reject; });
      this._opened.catch(() => {});
      if (!this.ws && !this._timer) this._open();
    }
    return this._opened;
  }

  /** Close for good: no reconnect; open requests and calls end with code `closed`. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this._failAll(new RkstreamError("closed", "the client was closed"));
    this._onGiveUp?.(new RkstreamError("closed", "the client was closed"));
    this._opened = null;
  }

  _open() {
    this._timer = null;
    const ws = new WebSocket(this.url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.session = null;
    ws.onmessage = (message) => {
      const event = typeof message.data === "string" ? JSON.parse(message.data)
        : decoder.decode(new Uint8Array(message.data));
      this._receive(event);
    };
    ws.onclose = (close) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const hadSession = this.session !== null;
      this.session = null;
      this._failAll(new RkstreamError("connection_lost",
        `the connection to ${this.url.split("?")[0]} closed (${close.code}${close.reason ? " " + close.reason : ""})`));
      if (hadSession) this._emit("disconnect", { code: close.code, reason: close.reason });
      if (!this._closed && this.reconnect) {
        const delayMs = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt);
        this.attempt += 1;
        this._emit("reconnecting", { attempt: this.attempt, delayMs });
        this._timer = setTimeout(() => this._open(), delayMs * (0.8 + 0.4 * Math.random()));
      } else if (!hadSession) {
        this._onGiveUp?.(new RkstreamError("connection_lost", `could not connect to ${this.url.split("?")[0]}`));
        this._opened = null;
      }
    };
  }

  _emit(name, detail) { this.dispatchEvent(new CustomEvent(name, { detail })); }

  _failAll(error) {
    const requests = [...this._requests.values()];
    this._requests.clear();
    for (const request of requests) request._fail(error);
    const calls = [...this._calls.values()];
    this._calls.clear();
    for (const call of calls) call.reject(error);
  }

  _receive(event) {
    const rid = event.request_id;
    if (event.type === "session.created") {
      this.session = event;
      this.attempt = 0;
      if (this._wanted) {  // its session.updated answers this entry, not a caller's
        this._call(`session:${++this._counter}`, { type: "session.update", session: this._wanted })
          .catch((error) => this._emit("error", error));
      }
      this._emit("session", event);
      this._onOpen?.(event);
      this._opened = null;
    } else if (rid !== undefined && this._requests.has(rid)) {
      const request = this._requests.get(rid);
      // A duplicate id's error is the one error that is not followed by a response.done.
      if (event.type === "error" && event.error.code === "duplicate_request_id") return;
      request._push(event);
      if (event.type === "response.done") this._requests.delete(rid);
    } else if (event.type === "error") {
      const error = RkstreamError.fromBody(event.error, rid);
      const key = [...this._calls.keys()].find((k) => this._calls.get(k).eventId === error.eventId);
      if (error.eventId !== undefined && key !== undefined) this._settle(key, null, error);
      else this._emit("error", error);
    } else if (event.type === "image.stored") {
      this._settle(`image:${event.image_id}`, event.image_id);
    } else if (event.type === "session.updated") {
      this._settle(this._first("session:"), event.session);
    } else if (event.type === "pong") {
      this._settle(this._first("ping:"), performance.now());
    }
  }

  _first(prefix) { return [...this._calls.keys()].find((k) => k.startsWith(prefix)); }

  _settle(key, value, error) {
    const call = key === undefined ? undefined : this._calls.get(key);
    if (!call) return;
    this._calls.delete(key);
    if (error) call.reject(error); else call.resolve(value);
  }

  _send(event, strict = true) {
    if (!this.connected) {
      if (strict) throw new RkstreamError("not_connected", "not connected to the server");
      return;
    }
    this.ws.send(encoder.encode(event));
  }

  _call(key, event) {
    const eventId = `e${++this._counter}`;
    return new Promise((resolve, reject) => {
      this._send({ ...event, event_id: eventId });
      this._calls.set(key, { resolve, reject, eventId });
    });
  }

  /**
   * Start a response. Several may run at once on the socket.
   * @param {string | object[]} input a user's text, or protocol messages [{role, content}]
   * @param {object} [options]
   * @param {string} [options.model] a served model's name (default: the session's)
   * @param {object} [options.params] max_tokens, temperature, top_p, top_k, stop, ...
   * @param {boolean} [options.stream] false: no deltas, the text comes in response.done
   * @param {object[]} [options.tools] functions the model may call
   * @param {string|object} [options.toolChoice]
   * @param {boolean} [options.parallelToolCalls]
   * @param {boolean} [options.enableThinking]
   * @param {string} [options.requestId] default: a fresh id
   * @returns {RkstreamRequest}
   */
  request(input, options = {}) {
    const id = options.requestId ?? `r${++this._counter}`;
    const request = new RkstreamRequest(this, id);
    const messages = typeof input === "string" ? [{ role: "user", content: input }] : input;
    try {
      if (this._requests.has(id)) {
        throw new RkstreamError("duplicate_request_id", `request ${id} is still open`,
          { param: "request_id", requestId: id });
      }
      this._send({
        type: "response.create", request_id: id, input: messages, model: options.model,
        params: options.params, stream: options.stream, tools: options.tools,
        tool_choice: options.toolChoice, parallel_tool_calls: options.parallelToolCalls,
        enable_thinking: options.enableThinking,
      });
      this._requests.set(id, request);
    } catch (error) {
      request._fail(error);
    }
    return request;
  }

  /**
   * Encode an image once; later requests use it as {type: "image", image_id}.
   * Ids belong to the connection: after a reconnect, upload again.
   * @param {Uint8Array|ArrayBuffer|Blob} data JPEG, PNG or WebP bytes, or raw pixels
   * @param {string} [format] jpeg, png, webp, rgb or bgr (default: from the Blob's type)
   * @param {{imageId?: string, width?: number, height?: number}} [options]
   * @returns {Promise<string>} the image_id
   */
  async uploadImage(data, format, options = {}) {
    format = format ?? (data instanceof Blob ? data.type.replace("image/", "") || undefined : undefined);
    const bytes = await toBytes(data);
    const imageId = options.imageId ?? `img_c${++this._counter}`;
    return this._call(`image:${imageId}`, {
      type: "image.upload", data: bytes, image_id: imageId, format,
      width: options.width, height: options.height,
    });
  }

  /**
   * Send a camera frame; a stream keeps only its newest. Problems come as `error` events.
   * @param {string} stream @param {number} seq
   * @param {Uint8Array|ArrayBuffer|Blob} data
   * @param {{tsNs?: number|bigint, format?: string, width?: number, height?: number}} [options]
   */
  async appendFrame(stream, seq, data, options = {}) {
    const bytes = await toBytes(data);
    // Nanoseconds since the epoch pass 2**53: sent as a msgpack integer from a BigInt.
    const ts = options.tsNs;
    this._send({
      type: "frame.append", stream, seq, data: bytes, format: options.format,
      ts_ns: ts === undefined || typeof ts === "bigint" ? ts : BigInt(Math.round(ts)),
      width: options.width, height: options.height, event_id: `e${++this._counter}`,
    });
  }

  /**
   * Change the session (kept and sent again after a reconnect).
   * @param {{instructions?: string|null, model?: string, params?: object}} session
   * @returns {Promise<any>} session.updated's session: {id, instructions, model, params}
   */
  async updateSession(session) {
    const key = `session:${++this._counter}`;
    const updated = await this._call(key, { type: "session.update", session });
    this._wanted = { ...this._wanted, ...session,
      params: { ...this._wanted?.params, ...session.params } };
    return updated;
  }

  /** A protocol-level ping. @returns {Promise<number>} the round trip in ms */
  async ping() {
    const started = performance.now();
    const answered = await this._call(`ping:${++this._counter}`, { type: "ping" });
    return answered - started;
  }
}

async function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (data instanceof Blob) return new Uint8Array(await data.arrayBuffer());
  throw new TypeError("expected a Uint8Array, an ArrayBuffer or a Blob");
}
