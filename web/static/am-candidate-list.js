// <agency-candidate-list>: the candidates the user sees, each linking to its page, with a
// blue dot while it has unread messages. Dots move live with `unread` frames.

import { api, blueDot, client, el, listen } from "./am-shared.js";

class AgencyCandidateList extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.list = el("ul", { class: "candidate-list" });
    this.replaceChildren(this.list);
    this.stopListening = listen(this.client, {
      unread: (e) => this.setDot(e.detail.candidate, e.detail.candidate_unread),
      "unread.summary": () => this.load(),
      connected: () => this.load(),
    });
    this.load();
  }

  disconnectedCallback() {
    this.stopListening();
  }

  async load() {
    const { candidates } = await api("/api/v1/candidates?limit=500");
    this.list.replaceChildren(...candidates.map((c) => el("li", { "data-candidate": c.id },
      el("a", { href: `/candidates/${encodeURIComponent(c.id)}`, text: c.name }),
      blueDot({ "aria-label": `${c.unread} unread`, hidden: !c.unread }))));
  }

  setDot(candidateId, unread) {
    const dot = this.list.querySelector(`li[data-candidate="${CSS.escape(candidateId)}"] .blue-dot`);
    if (!dot) return;
    dot.hidden = !unread;
    dot.setAttribute("aria-label", `${unread} unread`);
  }
}

customElements.define("agency-candidate-list", AgencyCandidateList);
