// Agency Messaging browser client: one socket per tab, shared by every element on the page.
//
// - signs in with the session cookie (same origin), so no token is ever in page script;
// - reconnects with exponential backoff and jitter;
// - resumes every subscribed candidate from the last seq it saw, with batch subscribes (one
//   frame per 100 candidates), and drops duplicates;
// - reports `reset` so that views reload over REST when the log no longer reaches back;
// - queues sends made while offline, each with a client_id, so a retry never doubles one;
// - speaks protocol 2 when the server does (one `unread.batch` frame per batch of unread
//   changes), and hands each batch on as protocol 1's `unread` and `unread.summary` events,
//   so that listeners know one shape whichever protocol the server speaks.

const PING_EVERY_MS = 25_000;
const ANSWER_TIMEOUT_MS = 15_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const MAX_BATCH = 100; // candidates in one batch `subscribe` (docs/protocol.md)
const PROTOCOL_2 = "agency-messaging.v2"; // the subprotocol that asks for protocol 2

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error ?? {};
    throw new ApiError(response.status, error.code ?? "unknown", error.message ?? `HTTP ${response.status}`);
  }
  return data;
}

export function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class MessagingClient extends EventTarget {
  constructor(url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`) {
    super();
    this.url = url;
    this.socket = null;
    this.connected = false;
    this.subscriptions = new Map(); // candidate -> last seq seen (null: none yet)
    this.answers = new Map(); // ref -> {resolve, reject, timer}
    this.outbox = []; // {frame, resolve, reject}: sends waiting for a connection
    this.nextRef = 1;
    this.backoff = BACKOFF_MIN_MS;
    this.pingTimer = null;
    this.stopped = false;
    this.connect();
  }

  // --- connection ------------------------------------------------------------------

  connect() {
    if (this.stopped) return;
    // A server without protocol 2 answers with no subprotocol: protocol 1, handled as well.
    const socket = new WebSocket(this.url, [PROTOCOL_2]);
    this.socket = socket;
    socket.addEventListener("open", () => this.onOpen(socket));
    socket.addEventListener("message", (event) => this.onFrame(event.data));
    socket.addEventListener("close", (event) => this.onClose(socket, event));
  }

  async onOpen(socket) {
    if (socket !== this.socket) return;
    this.connected = true;
    this.backoff = BACKOFF_MIN_MS;
    this.pingTimer = setInterval(() => this.request({ op: "ping" }).catch(() => {}), PING_EVERY_MS);
    const resumed = this.resume([...this.subscriptions.keys()]);
    const waiting = this.outbox.splice(0);
    for (const item of waiting) this.request(item.frame).then(item.resolve, item.reject);
    // `connected` means resumed too: a view that reloads over REST on it then reads a state
    // that every later event moves on from, with none missed in between.
    await resumed;
    if (socket === this.socket && this.connected) this.emit("connected", {});
  }

  onClose(socket, event) {
    if (socket !== this.socket) return;
    this.connected = false;
    clearInterval(this.pingTimer);
    for (const [ref, answer] of this.answers) {
      clearTimeout(answer.timer);
      answer.reject(new ApiError(0, "disconnected", "The connection was lost."));
      this.answers.delete(ref);
    }
    this.emit("disconnected", { code: event.code });
    if (event.code === 4001) {
      this.emit("signed-out", {});
      return; // the session expired: reconnecting would only be refused
    }
    const delay = this.backoff * (0.5 + Math.random());
    this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff * 2);
    setTimeout(() => this.connect(), delay);
  }

  stop() {
    this.stopped = true;
    this.socket?.close(1000);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // --- frames ----------------------------------------------------------------------

  request(frame) {
    if (!this.connected) return Promise.reject(new ApiError(0, "disconnected", "Not connected."));
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.answers.delete(ref);
        reject(new ApiError(0, "timeout", "The server did not answer."));
      }, ANSWER_TIMEOUT_MS);
      this.answers.set(ref, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...frame, ref }));
    });
  }

  onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    const answer = frame.ref != null ? this.answers.get(frame.ref) : undefined;
    if (answer && (frame.type === "ack" || frame.type === "error" || frame.type === "pong")) {
      this.answers.delete(frame.ref);
      clearTimeout(answer.timer);
      if (frame.type === "error") answer.reject(new ApiError(0, frame.code, frame.message));
      else answer.resolve(frame);
      return;
    }
    if (frame.type === "message.created" || frame.type === "message.deleted") {
      if (!this.accept(frame.candidate, frame.seq)) return; // a duplicate after a resume
    }
    if (frame.type === "unsubscribed") this.subscriptions.delete(frame.candidate);
    if (frame.type === "unread.batch") this.emitUnreadBatch(frame);
    else this.emit(frame.type, frame);
  }

  // Protocol 2's batch, as the frames protocol 1 sends for it: an `unread` per thread, then
  // the summary (after a lost broker link on the server).
  emitUnreadBatch({ threads, total_unread: total, summary }) {
    for (const thread of threads ?? []) this.emit("unread", { type: "unread", ...thread, total_unread: total });
    if (summary) this.emit("unread.summary", { type: "unread.summary", candidates: summary, total_unread: total });
  }

  accept(candidate, seq) {
    if (!this.subscriptions.has(candidate)) return false;
    const last = this.subscriptions.get(candidate);
    if (last !== null && seq <= last) return false;
    this.subscriptions.set(candidate, seq);
    return true;
  }

  // --- subscriptions and ops -----------------------------------------------------------

  // Settles once the server has answered the subscribe: now, or after the next connect.
  async subscribe(candidate) {
    if (!this.subscriptions.has(candidate)) this.subscriptions.set(candidate, null);
    if (this.connected) await this.resubscribe(candidate);
    else await new Promise((resolve) => this.addEventListener("connected", resolve, { once: true }));
  }

  // One candidate, with the single form of `subscribe` (a candidate followed anew).
  async resubscribe(candidate) {
    try {
      this.subscribed(candidate, await this.request({ op: "subscribe", ...this.resumePoint(candidate) }));
    } catch (error) {
      this.notSubscribed(candidate, error.code);
    }
  }

  // Every candidate of a (re)opened socket, with batch `subscribe` frames of up to 100:
  // one ack for each, with a result per candidate.
  resume(candidates) {
    const batches = [];
    for (let i = 0; i < candidates.length; i += MAX_BATCH) batches.push(candidates.slice(i, i + MAX_BATCH));
    return Promise.all(batches.map((batch) => this.resubscribeAll(batch)));
  }

  async resubscribeAll(candidates) {
    let ack;
    try {
      ack = await this.request({ op: "subscribe", candidates: candidates.map((c) => this.resumePoint(c)) });
    } catch (error) {
      // `invalid` refuses the whole list, for one malformed candidate id (or from a server
      // older than the batch form): each candidate on its own then fails alone, if at all.
      if (error.code === "invalid") await Promise.all(candidates.map((c) => this.resubscribe(c)));
      else for (const candidate of candidates) this.notSubscribed(candidate, error.code);
      return;
    }
    for (const result of ack.candidates ?? []) {
      if (result.error) this.notSubscribed(result.candidate, result.error.code);
      else this.subscribed(result.candidate, result);
    }
  }

  // What a subscribe asks for a candidate: to follow it from the last seq seen, if any.
  resumePoint(candidate) {
    const after = this.subscriptions.get(candidate);
    return after === null || after === undefined ? { candidate } : { candidate, after };
  }

  // A candidate's subscribe answered, by its ack or its result in a batch ack: {seq, reset}.
  subscribed(candidate, { seq, reset }) {
    if (!this.subscriptions.has(candidate)) return; // unsubscribed meanwhile: stays so
    const last = this.subscriptions.get(candidate);
    if (reset) this.emit("reset", { candidate });
    if (last === null || reset || seq > last) {
      // Replayed events (if any) already moved the seq on; never move it back, except on a
      // reset: the log starts again (a candidate erased and created anew), from the ack's seq.
      this.subscriptions.set(candidate, reset ? seq : Math.max(seq, last ?? 0));
    }
  }

  // A candidate's subscribe refused, by an error frame or its error in a batch ack.
  notSubscribed(candidate, code) {
    if (code !== "not_found") return; // (unavailable, a timeout...: kept for the next connect)
    this.subscriptions.delete(candidate);
    this.emit("unsubscribed", { candidate, reason: "access" });
  }

  unsubscribe(candidate) {
    this.subscriptions.delete(candidate);
    if (this.connected) this.request({ op: "unsubscribe", candidate }).catch(() => {});
  }

  // `clientId`: the same one for a retry of a send that failed, so that it is never stored twice.
  send(thread, body, clientId = newClientId()) {
    const frame = { op: "send", thread, body, client_id: clientId };
    if (this.connected) {
      return this.request(frame).catch((error) => {
        if (error.code !== "disconnected" && error.code !== "timeout") throw error;
        return this.queue(frame); // lost on the way: the client_id makes the retry safe
      });
    }
    return this.queue(frame);
  }

  queue(frame) {
    return new Promise((resolve, reject) => this.outbox.push({ frame, resolve, reject }));
  }

  read(thread, messageId) {
    if (!this.connected) return api(`/api/v1/threads/${thread}/read`, { method: "POST", body: { message_id: messageId } });
    return this.request({ op: "read", thread, message_id: messageId });
  }

  remove(messageId) {
    if (!this.connected) return api(`/api/v1/messages/${messageId}`, { method: "DELETE" });
    return this.request({ op: "delete", message: messageId });
  }
}

let shared = null;

// One client per page, created on first use.
export function client() {
  shared ??= new MessagingClient();
  return shared;
}
