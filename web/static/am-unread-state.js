// What the top bar's "new message" line knows about one candidate, kept up to date from
// socket frames alone: the unread counts, and the messages others wrote since it loaded.
//
// Why frames are enough to name the newest unread message: a read marker is a message id
// and everything after it by others is unread, so a thread's unread messages are its newest
// ones by others, `unread` of them. Messages the line never saw came before it loaded, and
// the summary it loaded from named the newest unread one of them; so among the threads
// with unread messages, the newest message it knows of is the one to show. Only when no
// such thread has a known message must it ask the server again (`missing`).

const KEPT_PER_THREAD = 20; // enough to fall back on when the newest ones are deleted

export class CandidateUnread {
  // `entry`: this candidate's entry in GET /api/v1/unread (undefined: nothing unread).
  constructor(candidateId, userId, entry) {
    this.candidateId = candidateId;
    this.userId = userId;
    this.total = entry?.unread ?? 0;
    this.counts = new Map(); // thread -> unread messages in it
    this.seen = new Map(); // thread -> messages by others, oldest first
    if (entry) {
      this.counts.set(entry.latest.thread, 1); // at least: the summary counts per candidate
      this.remember(entry.latest);
    }
  }

  get newest() {
    let newest = null;
    for (const [thread, count] of this.counts) {
      const last = count > 0 ? this.seen.get(thread)?.at(-1) : null;
      if (last && (!newest || last.id > newest.id)) newest = last;
    }
    return newest;
  }

  // Something is unread that the line has never seen: only the server can say what.
  get missing() {
    return this.total > 0 && !this.newest;
  }

  apply(frame) {
    if (frame.type === "unread.summary") this.onSummary(frame);
    if (frame.candidate !== this.candidateId) return;
    if (frame.type === "unread") this.onCount(frame);
    if (frame.type === "message.created") this.remember(frame.message);
    if (frame.type === "message.deleted") this.onDeleted(frame);
  }

  onCount({ thread, unread, candidate_unread: total }) {
    this.counts.set(thread, unread);
    this.total = total;
  }

  // A full summary replaces the counts. Per thread it says nothing, so the thread counts
  // are kept only while the candidate's count stands.
  onSummary({ candidates }) {
    const total = candidates.find((c) => c.candidate === this.candidateId)?.unread ?? 0;
    if (total !== this.total) this.counts.clear();
    this.total = total;
  }

  // The deleted message's own unread frame comes later (frames are batched); until then,
  // the counts lose it here if it was one of the unread ones.
  onDeleted({ thread, message_id: messageId }) {
    const kept = this.seen.get(thread) ?? [];
    const index = kept.findIndex((m) => m.id === messageId);
    if (index === -1) return;
    const count = this.counts.get(thread) ?? 0;
    if (index >= kept.length - count) {
      this.counts.set(thread, count - 1);
      this.total = Math.max(0, this.total - 1);
    }
    this.seen.set(thread, kept.filter((m) => m.id !== messageId));
  }

  remember(message) {
    if (message.deleted || message.author.id === this.userId) return;
    const kept = this.seen.get(message.thread) ?? [];
    if (kept.some((m) => m.id === message.id)) return;
    kept.push(message);
    kept.sort((a, b) => a.id - b.id);
    this.seen.set(message.thread, kept.slice(-KEPT_PER_THREAD));
  }
}
