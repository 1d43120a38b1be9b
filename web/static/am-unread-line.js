// <agency-unread-line candidate="c1">: the top bar's line naming the newest unread message
// about the candidate; activating it opens the candidate's <agency-messages> dialog at the
// thread that holds the message.
//
// It loads GET /api/v1/unread once it follows the candidate, and again after a reconnect
// (unread frames are not replayed). Between those, frames alone move it: counts come in
// `unread` and `unread.summary`, message text in `message.created` (see am-unread-state.js).

import { api, blueDot, client, displayName, el, follow, listen, me, requestOpen } from "./am-shared.js";
import { CandidateUnread } from "./am-unread-state.js";

const FRAMES = ["unread", "unread.summary", "message.created", "message.deleted"];

class AgencyUnreadLine extends HTMLElement {
  connectedCallback() {
    this.candidateId = this.getAttribute("candidate");
    this.client = client();
    this.state = null; // a CandidateUnread, once loaded
    this.held = null; // frames that arrive while it loads: applied on top of what it loads
    this.loads ??= 0; // never reset: a load begun before a move must not pass for a new one
    this.shownId = undefined; // the id of the message on the line (null: none)
    this.setAttribute("role", "status");
    const onFrame = (e) => this.onFrame(e.detail);
    this.stopListening = listen(this.client, {
      ...Object.fromEntries(FRAMES.map((type) => [type, onFrame])),
      connected: () => this.load(),
      // Who sees the candidate changed: threads, and so unread messages, may have gone.
      "candidate.updated": (e) => e.detail.candidate === this.candidateId && this.load(),
    });
    this.following = follow(this.candidateId);
    // Loaded once subscribed, so that every message after what it loads comes as a frame;
    // a client not connected yet loads on `connected` instead.
    if (this.client.connected) this.following.joined.then(() => this.load());
  }

  disconnectedCallback() {
    this.stopListening();
    this.following.stop();
    this.loads += 1; // drops a load on its way
  }

  async load() {
    const load = ++this.loads;
    this.held ??= [];
    const fresh = await this.fetchState().catch(() => null);
    if (load !== this.loads) return; // superseded by a newer load, or the line left the page
    if (fresh) this.state = fresh;
    for (const frame of this.held) this.state?.apply(frame);
    this.held = null;
    this.render();
  }

  async fetchState() {
    const [user, { candidates }] = await Promise.all([me(), api("/api/v1/unread")]);
    const entry = candidates.find((c) => c.candidate === this.candidateId);
    return new CandidateUnread(this.candidateId, user.id, entry);
  }

  onFrame(frame) {
    if (this.held) {
      this.held.push(frame);
      return;
    }
    if (!this.state) return; // not loaded yet: the load reads all of it
    this.state.apply(frame);
    if (this.state.missing) this.load();
    else this.render();
  }

  render() {
    const message = this.state?.total ? this.state.newest : null;
    if ((message?.id ?? null) === this.shownId) return; // the same line: announce nothing new
    this.shownId = message?.id ?? null;
    this.replaceChildren(...(message ? [this.line(message)] : []));
  }

  line(message) {
    const open = () => requestOpen(this.candidateId, { thread: message.thread, message: message.id });
    return el("button", { type: "button", class: "am-new-line", onclick: open },
      blueDot(),
      el("strong", { text: `New message from ${displayName(message.author)}: ` }),
      el("span", { class: "am-new-text", text: message.body ?? "" }));
  }
}

customElements.define("agency-unread-line", AgencyUnreadLine);
