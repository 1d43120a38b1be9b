// <agency-candidate-list>: the candidates the user sees, latest activity first, each linking
// to its page with a preview of its last message, a blue dot while it has unread messages
// and their count. Dots and counts move live with `unread` frames; a frame also makes the
// list fetch itself again (debounced), for the new order and preview.

import { preview, relativeTime } from "./am-inbox.js";
import { api, blueDot, client, el, listen, me } from "./am-shared.js";

const PAGE = 500;
const MAX_PAGES = 20;
const REFETCH_DELAY_MS = 300; // a batch of frames (one per thread) makes one fetch

class AgencyCandidateList extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.list = el("ul", { class: "candidate-list" });
    this.replaceChildren(this.list);
    this.loads = 0;
    this.heard = null; // counts from frames that come while a load is on its way
    this.stopListening = listen(this.client, {
      unread: (e) => this.onUnread(e.detail),
      "unread.summary": () => this.load(),
      connected: () => this.load(),
    });
    this.load();
  }

  disconnectedCallback() {
    this.stopListening();
    clearTimeout(this.refetchTimer);
    this.loads += 1;
  }

  onUnread({ candidate, candidate_unread: unread }) {
    this.heard?.set(candidate, unread);
    this.setCount(candidate, unread);
    clearTimeout(this.refetchTimer);
    this.refetchTimer = setTimeout(() => this.load(), REFETCH_DELAY_MS);
  }

  async load() {
    const load = ++this.loads;
    this.heard = new Map();
    const [user, candidates] = await Promise.all([me(), this.fetchAll()]).catch(() => []);
    if (load !== this.loads) return;
    const heard = this.heard;
    this.heard = null;
    if (!candidates) return; // kept as it was: the next connect loads again
    const focused = this.list.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.candidate : null;
    this.list.replaceChildren(...candidates.map((c) => this.row(user, c)));
    // What frames said since the load began is newer than what it read.
    for (const [candidate, unread] of heard) this.setCount(candidate, unread);
    // A list redrawn under the keyboard keeps the focus on the same candidate.
    if (focused) this.list.querySelector(`li[data-candidate="${CSS.escape(focused)}"] a`)?.focus();
  }

  // Every page, newest activity first: a page goes on before the last message of the one
  // before it (a server without `order=activity` pages by candidate id: `after`).
  async fetchAll() {
    const all = [];
    let query = "";
    for (let pages = 0; pages < MAX_PAGES; pages += 1) {
      const page = await api(`/api/v1/candidates?order=activity&limit=${PAGE}${query}`);
      all.push(...page.candidates);
      const last = page.candidates.at(-1);
      if (!page.has_more || !last) break;
      query = last.last_message ? `&before=${last.last_message.id}` : `&after=${encodeURIComponent(last.id)}`;
    }
    return all;
  }

  row(user, candidate) {
    const unread = candidate.unread || 0;
    const last = candidate.last_message ?? null;
    return el("li", { "data-candidate": candidate.id, class: `am-activity${unread ? " am-unread" : ""}` },
      el("a", { href: `/candidates/${encodeURIComponent(candidate.id)}`, text: candidate.name }),
      last ? relativeTime(last.created_at, { prefix: "Last message " }) : null,
      blueDot({ "aria-label": `${unread} unread`, hidden: !unread }),
      el("p", { class: "am-preview", title: last ? preview(last, user) : null, text: preview(last, user) }),
      // The dot says the count to assistive technology; this says it to the eye.
      el("span", { class: "am-count", "aria-hidden": "true", hidden: !unread, text: String(unread) }));
  }

  setCount(candidateId, unread) {
    const row = this.list.querySelector(`li[data-candidate="${CSS.escape(candidateId)}"]`);
    if (!row) return;
    const dot = row.querySelector(".blue-dot");
    dot.hidden = !unread;
    dot.setAttribute("aria-label", `${unread} unread`);
    const count = row.querySelector(".am-count");
    count.hidden = !unread;
    count.textContent = String(unread);
    row.classList.toggle("am-unread", Boolean(unread));
  }
}

customElements.define("agency-candidate-list", AgencyCandidateList);
