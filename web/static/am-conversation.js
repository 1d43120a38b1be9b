// One candidate's conversations as the signed-in user sees them: the threads with their
// unread counts, and the one selected. The parts of <agency-messages> render from it and
// listen to its events:
//   change   the threads, a count or the selection changed
//   show     the selected thread's messages are to be shown (again)
//   outgoing detail: a message this tab is sending ({clientId, key, body, state}), whose
//            state changed: "sending", or "failed" (with its `error`)
//   sent     detail: a message this tab sent (its client_id names the outgoing one)
//   lost     the user no longer has access to the candidate
//
// It reloads when who sees the candidate changes (`candidate.updated`): linked agency users,
// the coordinator, private contacts and threads may all have changed.

import { api, client, displayName, follow, listen, me, newClientId } from "./am-shared.js";

export class Conversation extends EventTarget {
  constructor(candidateId) {
    super();
    this.candidateId = candidateId;
    this.client = client();
    this.user = null;
    this.candidate = null;
    this.threads = []; // {key, id|null, kind, agency_user, member, unread, label, linked, last_message}
    this.drafts = new Map(); // key -> a private thread chosen but not written in yet (id null)
    this.selected = null;
    this.lost = false;
    this.loaded = new Promise((resolve) => { this.onFirstLoad = resolve; });
    this.settled = false; // a first load has answered (or failed)
    this.reloads = 0;
    this.outgoing = new Map(); // client_id -> a message on its way, or failed: shown until sent
    this.sending = Promise.resolve(); // sends go one at a time, in the order written
  }

  start() {
    const mine = (handler) => (e) => e.detail.candidate === this.candidateId && handler(e.detail);
    this.stopListening = listen(this.client, {
      unread: mine((frame) => this.onUnread(frame)),
      "message.created": mine((frame) => this.onCreated(frame)),
      "unread.summary": () => this.reload(),
      connected: () => this.reload(),
      reset: mine(() => this.reload()),
      "candidate.updated": mine(() => this.reload()),
      unsubscribed: mine(() => this.loseAccess()),
    });
    this.following = follow(this.candidateId);
    this.reload();
  }

  stop() {
    this.stopListening();
    this.following.stop();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // --- reading -----------------------------------------------------------------------

  get totalUnread() {
    return this.threads.reduce((sum, t) => sum + (t.unread || 0), 0);
  }

  get canGoPrivate() {
    if (this.lost || !this.candidate) return false;
    const contacts = this.user.kind === "agency" ? this.candidate.private_contacts : this.candidate.agency_users;
    return contacts.length > 0;
  }

  find(key) {
    return this.threads.find((t) => t.key === key);
  }

  findById(id) {
    return this.threads.find((t) => t.id === id);
  }

  // Reloads overlap (an update, a reconnect): only the latest one's answer is applied, and
  // an earlier one settles with it.
  reload() {
    this.reloading = this.load(++this.reloads);
    return this.reloading;
  }

  async load(reload) {
    try {
      const path = `/api/v1/candidates/${encodeURIComponent(this.candidateId)}`;
      const [user, candidate, { threads }] = await Promise.all([me(), api(path), api(`${path}/threads`)]);
      if (reload !== this.reloads) return this.reloading;
      this.user = user;
      this.candidate = candidate;
      this.lost = false;
      // A draft stays while it is the one open: one the user left, or now created, goes.
      for (const key of this.drafts.keys()) {
        if (key !== this.selected?.key || threads.some((t) => threadKey(t) === key)) this.drafts.delete(key);
      }
      this.threads = threadList(user, candidate, threads, [...this.drafts.values()]);
      this.selected = this.find(this.selected?.key) ?? this.threads[0] ?? null;
      this.emit("change");
      this.emit("show");
    } catch (error) {
      if (error.status === 404 && reload === this.reloads) this.loseAccess();
    } finally {
      if (reload === this.reloads) {
        this.settled = true;
        this.onFirstLoad();
      }
    }
  }

  // The thread with that id, once the conversation has loaded (null: none the user sees).
  async threadById(id) {
    await this.loaded;
    if (!this.findById(id) && !this.lost) await this.reload(); // started since the load
    return this.findById(id) ?? null;
  }

  // --- live events ---------------------------------------------------------------------

  onUnread(frame) {
    const thread = this.findById(frame.thread);
    if (!thread) {
      this.reload(); // a thread this view has not seen yet (someone else started it)
      return;
    }
    thread.unread = frame.unread;
    this.emit("change");
  }

  onCreated(frame) {
    const thread = this.findById(frame.thread);
    if (thread) thread.last_message = frame.message;
    else this.reload();
  }

  loseAccess() {
    this.lost = true;
    this.threads = [];
    this.emit("change");
    this.emit("lost");
  }

  // --- acting ----------------------------------------------------------------------------

  select(thread) {
    this.selected = thread;
    this.emit("change");
    this.emit("show");
  }

  // A message from someone else arrived in the open thread. Its unread frame comes later
  // (frames are batched), so the count moves here, for markRead to read it at once.
  countArrival(threadId) {
    const thread = this.findById(threadId);
    if (thread) thread.unread = (thread.unread || 0) + 1;
  }

  // Read only when seen: the caller shows the thread, and the page is visible (unless the
  // user has just replied in it, which says it was seen).
  async markRead(threadId, messageId, { replied = false } = {}) {
    const thread = this.findById(threadId);
    if (!thread || !messageId || !thread.unread) return;
    if (!replied && document.visibilityState !== "visible") return;
    try {
      const ack = await this.client.read(threadId, messageId);
      thread.unread = ack.unread;
      this.emit("change");
    } catch {
      // Counts stay as they are; the next unread event corrects them.
    }
  }

  async openThread(request) {
    const path = `/api/v1/candidates/${encodeURIComponent(this.candidateId)}/threads`;
    const thread = await api(path, { method: "POST", body: request });
    await this.reload();
    return this.findById(thread.id) ?? thread;
  }

  // Selects the private thread with `other` (an agency user for a member, a member for an
  // agency user). One not written in yet is only a draft here: the first message creates
  // it, so that nobody is shown an empty conversation.
  startPrivate(other) {
    const agencyUser = this.user.kind === "agency" ? this.user : other;
    const member = this.user.kind === "agency" ? other : this.user;
    const key = threadKey({ kind: "private", agency_user: agencyUser, member });
    let thread = this.find(key);
    if (!thread) {
      thread = decorate(this.user, this.candidate, {
        id: null, kind: "private", agency_user: agencyUser, member, unread: 0, last_message: null,
      });
      this.drafts.set(key, thread);
      this.threads = [...this.threads, thread].sort(threadOrder);
    }
    this.select(thread);
  }

  // Sends into `thread`, first creating it when it does not exist yet. The message shows at
  // once as outgoing; it settles when the server acks it, or stays as failed (to retry).
  // One at a time, in the order written: a second message must not overtake the first
  // (say, while the first one creates the conversation).
  send(thread, body) {
    const entry = { clientId: newClientId(), key: thread.key, thread, body, state: "sending", error: null };
    this.outgoing.set(entry.clientId, entry);
    this.emit("outgoing", entry);
    return this.enqueue(entry);
  }

  // Sends a failed message again, with its client_id: the server never stores it twice.
  retry(clientId) {
    const entry = this.outgoing.get(clientId);
    if (!entry || entry.state !== "failed") return Promise.resolve();
    entry.state = "sending";
    entry.error = null;
    this.emit("outgoing", entry);
    return this.enqueue(entry);
  }

  discard(clientId) {
    const entry = this.outgoing.get(clientId);
    if (!entry || entry.state !== "failed") return;
    this.outgoing.delete(clientId);
    entry.state = "discarded";
    this.emit("outgoing", entry);
  }

  // The messages on their way (or failed) in the thread with `key`, oldest first.
  outgoingIn(key) {
    return [...this.outgoing.values()].filter((entry) => entry.key === key);
  }

  enqueue(entry) {
    const delivery = this.sending.then(() => this.deliver(entry));
    this.sending = delivery.catch(() => {});
    return delivery;
  }

  async deliver(entry) {
    let ack;
    try {
      let target = this.find(entry.key) ?? entry.thread;
      if (target.id === null) target = await this.openThread(creation(this.user, target));
      ack = await this.client.send(target.id, entry.body, entry.clientId);
    } catch (error) {
      if (error.code === "forbidden") this.reload(); // what changed shows (say, an unlinked agency user)
      entry.state = "failed";
      entry.error = error;
      this.emit("outgoing", entry);
      throw error;
    }
    this.outgoing.delete(entry.clientId);
    this.emit("sent", { ...ack.message, client_id: ack.message.client_id ?? entry.clientId });
    // A reply says the thread was seen: everything before it is read.
    await this.markRead(ack.message.thread, ack.message.id, { replied: true });
  }
}

// What POST .../threads needs to create `thread`.
function creation(user, thread) {
  if (user.kind === "agency") return thread.kind === "private" ? { private: true, member: thread.member.id } : { private: false };
  return { private: thread.kind === "private", agency_user: thread.agency_user.id };
}

// The tabs: the threads the user sees, an agency thread for each agency user that has none
// yet, and the private drafts (the first message creates them). Agency threads first, then
// private ones.
function threadList(user, candidate, threads, drafts) {
  const list = threads.map((t) => decorate(user, candidate, t));
  const agencyUsers = user.kind === "agency" ? [user] : candidate.agency_users;
  const stubs = agencyUsers.map((agencyUser) => (
    { id: null, kind: "agency", agency_user: agencyUser, member: null, unread: 0, last_message: null }));
  for (const stub of [...stubs, ...drafts]) {
    if (!list.some((t) => t.key === threadKey(stub))) list.push(decorate(user, candidate, stub));
  }
  return list.sort(threadOrder);
}

// A thread with what the views need: its key, its tab's label and whether its agency user
// is still linked to the candidate (`agency_user_linked`, or else, for a member, whether the
// candidate still lists that agency user; an agency user that sees it is linked).
function decorate(user, candidate, thread) {
  const other = thread.kind === "private" && user.kind === "agency" ? thread.member : thread.agency_user;
  let label = user.kind === "agency" ? "Hiring team" : displayName(other);
  if (thread.kind === "private") label = `Private: ${displayName(other)}`;
  const linked = thread.agency_user_linked ?? (user.kind === "agency" || candidate.agency_users.some((u) => u.id === thread.agency_user.id));
  return { ...thread, key: threadKey(thread), label, linked };
}

function threadOrder(a, b) {
  const order = (t) => (t.kind === "agency" ? 0 : 1);
  return order(a) - order(b) || a.label.localeCompare(b.label);
}

function threadKey(thread) {
  return `${thread.kind}:${thread.agency_user.id}:${thread.member?.id ?? ""}`;
}
