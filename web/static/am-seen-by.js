// <agency-seen-by>: under the selected thread's messages, who has read up to its last
// message. A member reads the people by name ("Seen by Ann Agent · TalentCo"); an agency
// user reads "Seen" for the hiring team as a whole (the server names no member to it).
// Each name (or "Seen") tells when on hover and on focus. Empty and hidden while nobody has.
//
// Part of <agency-messages>, which hands it its `conversation`. It draws from the thread's
// `seen` (GET .../threads), again on the conversation's "change" and "show", and moves live
// with `thread.read` frames and with the messages that arrive (a new last message is read
// by nobody yet).

import { client, displayName, el, listen } from "./am-shared.js";
import { exactTime } from "./am-inbox.js";

const names = new Intl.ListFormat("en", { style: "long", type: "conjunction" });

class AgencySeenBy extends HTMLElement {
  connectedCallback() {
    this.setAttribute("aria-live", "polite");
    this.hidden = true;
    this.lastIds = new Map(); // thread -> the newest message id known from frames
    this.shown = "";
    if (!this.conversation) return; // (only ever made by <agency-messages>, with one)
    const mine = (handler) => (e) => e.detail.candidate === this.conversation.candidateId && handler(e.detail);
    this.stopListening = [
      listen(this.conversation, {
        change: () => this.render(),
        show: () => this.render(),
        sent: (e) => this.onMessage(e.detail),
      }),
      listen(client(), {
        "thread.read": mine((frame) => this.onRead(frame)),
        "message.created": mine((frame) => this.onMessage(frame.message)),
      }),
    ];
    this.render();
  }

  disconnectedCallback() {
    for (const stop of this.stopListening ?? []) stop();
  }

  onMessage(message) {
    if (!message) return;
    this.lastIds.set(message.thread, Math.max(message.id, this.lastIds.get(message.thread) ?? 0));
    const thread = this.conversation.findById(message.thread);
    if (thread && (!thread.last_message || thread.last_message.id < message.id)) thread.last_message = message;
    this.render();
  }

  // Someone's read marker moved: their entry in the thread's `seen` takes the new position.
  onRead(frame) {
    const thread = this.conversation.findById(frame.thread);
    if (!thread) return;
    const same = (entry) => (frame.team ? entry.team : !entry.team && entry.reader?.id === frame.reader?.id);
    const entry = { reader: frame.reader ?? null, team: Boolean(frame.team), message_id: frame.message_id, at: frame.at ?? null };
    const seen = (thread.seen ?? []).filter((e) => !same(e));
    thread.seen = [...seen, entry];
    this.render();
  }

  // The readers to name: those who read up to the last message, other than its author (who
  // has seen it by writing it) and other than the user. An agency user is told of the team.
  readers(thread) {
    const user = this.conversation.user;
    const lastId = Math.max(thread.last_message?.id ?? 0, this.lastIds.get(thread.id) ?? 0);
    if (!user || !lastId) return [];
    const author = thread.last_message?.id === lastId ? thread.last_message.author : null;
    const upToIt = (thread.seen ?? []).filter((e) => e.message_id >= lastId);
    if (user.kind === "agency") {
      const team = upToIt.find((e) => e.team);
      return team && author?.kind !== "member" ? [team] : [];
    }
    return upToIt.filter((e) => !e.team && e.reader && e.reader.id !== user.id && e.reader.id !== author?.id);
  }

  render() {
    const thread = this.conversation?.selected;
    const readers = thread?.id ? this.readers(thread) : [];
    const key = JSON.stringify(readers.map((r) => [r.reader?.id ?? "team", r.at]));
    if (key === this.shown) return; // unchanged: announce nothing
    this.shown = key;
    this.hidden = readers.length === 0;
    if (!readers.length) {
      this.replaceChildren();
      return;
    }
    if (readers[0].team) {
      this.replaceChildren(this.reader("Seen", readers[0].at, "Seen by the hiring team"));
      return;
    }
    // "Seen by A, B, and C", each name its own element for its time.
    const parts = names.formatToParts(readers.map((r) => displayName(r.reader)));
    let index = 0;
    this.replaceChildren("Seen by ", ...parts.map((part) => (part.type === "element"
      ? this.reader(part.value, readers[index++].at, "Seen")
      : part.value)));
  }

  reader(text, at, what) {
    // In the tab order so that a keyboard shows the time as a mouse does (am-inbox.css).
    return el("span", { class: "am-seen-reader", tabindex: at ? "0" : null, title: at ? `${what} ${exactTime(at)}` : null, text });
  }
}

customElements.define("agency-seen-by", AgencySeenBy);
