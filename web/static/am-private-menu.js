// <agency-private-menu>: the dialog's "Message privately" button. A member starts a private
// thread with the agency user at once; an agency user picks among the members it may
// write to privately. Part of <agency-messages>, which hands it its `conversation`.

import { el, listen } from "./am-shared.js";

class AgencyPrivateMenu extends HTMLElement {
  connectedCallback() {
    this.button = el("button", { type: "button", class: "am-private", text: "Message privately", hidden: true, onclick: () => this.start() });
    this.menu = el("div", { role: "menu", class: "am-menu", hidden: true, "aria-label": "Message privately with" });
    this.replaceChildren(this.button, this.menu);
    this.stopListening = [
      listen(this.conversation, { change: () => { this.button.hidden = !this.conversation.canGoPrivate; } }),
      listen(this.closest("dialog") ?? this, { close: () => { this.menu.hidden = true; } }),
    ];
  }

  disconnectedCallback() {
    for (const stop of this.stopListening) stop();
  }

  async start() {
    const { user, candidate, selected } = this.conversation;
    if (user.kind === "agency") {
      this.toggleContacts(candidate);
      return;
    }
    const agencyUser = selected?.agency_user ?? candidate.agency_users[0];
    if (agencyUser) await this.openPrivate({ private: true, agency_user: agencyUser.id });
  }

  toggleContacts(candidate) {
    const show = this.menu.hidden;
    this.menu.replaceChildren(...candidate.private_contacts.map((member) => el("button", {
      type: "button",
      role: "menuitem",
      text: member.id === candidate.coordinator?.id ? `${member.name} (coordinator)` : member.name,
      onclick: () => {
        this.menu.hidden = true;
        this.openPrivate({ private: true, member: member.id });
      },
    })));
    this.menu.hidden = !show;
    if (show) this.menu.querySelector('[role="menuitem"]')?.focus();
  }

  async openPrivate(request) {
    const thread = await this.conversation.openThread(request);
    this.conversation.select(thread);
  }
}

customElements.define("agency-private-menu", AgencyPrivateMenu);
