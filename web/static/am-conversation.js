// One candidate's conversations as the signed-in user sees them: the threads with their
// unread counts, and the one selected. The parts of <agency-messages> render from it and
// listen to its events:
//   change   the threads, a count or the selection changed
//   show     the selected thread's messages are to be shown (again)
//   sent     detail: a message this tab sent
//   lost     the user no longer has access to the candidate

import { api, client, follow, listen, me } from "./am-shared.js";

export class Conversation extends EventTarget {
  constructor(candidateId) {
    super();
    this.candidateId = candidateId;
    this.client = client();
    this.user = null;
    this.candidate = null;
    this.threads = []; // {key, id|null, kind, agency_user, member, unread, label, last_message}
    this.selected = null;
    this.lost = false;
  }

  start() {
    const mine = (handler) => (e) => e.detail.candidate === this.candidateId && handler(e.detail);
    this.stopListening = listen(this.client, {
      unread: mine((frame) => this.onUnread(frame)),
      "message.created": mine((frame) => this.onCreated(frame)),
      "unread.summary": () => this.reload(),
      connected: () => this.reload(),
      reset: mine(() => this.reload()),
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

  async reload() {
    try {
      const path = `/api/v1/candidates/${encodeURIComponent(this.candidateId)}`;
      const [user, candidate, { threads }] = await Promise.all([me(), api(path), api(`${path}/threads`)]);
      this.user = user;
      this.candidate = candidate;
      this.lost = false;
      this.threads = threadList(user, candidate, threads);
      this.selected = this.find(this.selected?.key) ?? this.threads[0] ?? null;
      this.emit("change");
      this.emit("show");
    } catch (error) {
      if (error.status === 404) this.loseAccess();
    }
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

  async markRead(threadId, messageId) {
    const thread = this.findById(threadId);
    if (!thread || !messageId || !thread.unread || document.visibilityState === "hidden") return;
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

  // Sends into `thread`, first creating it when it does not exist yet.
  async send(thread, body) {
    let target = this.find(thread.key) ?? thread;
    if (target.id === null) {
      const request = { private: false, ...(this.user.kind === "member" ? { agency_user: target.agency_user.id } : {}) };
      target = await this.openThread(request);
    }
    const ack = await this.client.send(target.id, body);
    this.emit("sent", ack.message);
  }
}

// The tabs: the threads the user sees, and an agency thread for each agency user that has
// none yet (the first message creates it). Agency threads first, then private ones.
function threadList(user, candidate, threads) {
  const label = (t) => {
    if (t.kind === "private") return `Private: ${user.kind === "agency" ? t.member.name : t.agency_user.name}`;
    return user.kind === "agency" ? "Hiring team" : t.agency_user.name;
  };
  const list = threads.map((t) => ({ ...t, key: threadKey(t), label: label(t) }));
  const agencyUsers = user.kind === "agency" ? [{ id: user.id, name: user.name, kind: "agency" }] : candidate.agency_users;
  for (const agencyUser of agencyUsers) {
    const stub = { id: null, kind: "agency", agency_user: agencyUser, member: null, unread: 0, last_message: null };
    if (!list.some((t) => t.key === threadKey(stub))) list.push({ ...stub, key: threadKey(stub), label: label(stub) });
  }
  const order = (t) => (t.kind === "agency" ? 0 : 1);
  return list.sort((a, b) => order(a) - order(b) || a.label.localeCompare(b.label));
}

function threadKey(thread) {
  return `${thread.kind}:${thread.agency_user.id}:${thread.member?.id ?? ""}`;
}
