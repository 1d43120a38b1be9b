// <agency-private-menu>: the dialog's "Message privately" button. It opens the private
// thread with the other side, a draft until its first message: a member with the agency
// user (picked from a menu when the candidate has several), an agency user with one of the
// members it may write to privately (always from a menu). Part of <agency-messages>, which
// hands it its `conversation`. The menu takes the keys of the WAI-ARIA menu pattern: arrows,
// Home and End move between its items, Escape closes it.

import { displayName, el, icon, listen } from "./am-shared.js";

const PRIVATE = "M4 12h9v9H4zM6.5 12V9a2 2 0 0 1 4 0v3M18 4v6M15 7h6"; // a lock with a plus

class AgencyPrivateMenu extends HTMLElement {
  connectedCallback() {
    this.button = el("button", {
      type: "button",
      class: "am-private",
      title: "Message privately",
      hidden: true,
      onclick: () => this.start(),
    }, icon(PRIVATE, { size: 16, className: "am-private-icon" }), el("span", { class: "am-private-text", text: "Message privately" }));
    this.menu = el("div", {
      role: "menu",
      class: "am-menu",
      hidden: true,
      "aria-label": "Message privately with",
      onkeydown: (e) => this.onKey(e),
      // Escape pressed elsewhere in the dialog closes this menu first (the innermost thing).
      "onam-dismiss": () => {
        const inside = this.menu.contains(document.activeElement);
        this.setOpen(false);
        if (inside) this.button.focus();
      },
    });
    this.replaceChildren(this.button, this.menu);
    this.stopListening = [
      listen(this.conversation, {
        change: () => {
          this.button.hidden = !this.conversation.canGoPrivate;
          if (this.button.hidden) this.setOpen(false); // its choices are gone (say, unlinked)
        },
      }),
      listen(this.closest("dialog") ?? this, { close: () => this.setOpen(false) }),
    ];
  }

  disconnectedCallback() {
    for (const stop of this.stopListening) stop();
  }

  start() {
    const { user, candidate } = this.conversation;
    if (user.kind === "agency") {
      this.toggle(candidate.private_contacts.map((member) => ({
        text: member.id === candidate.coordinator?.id ? `${member.name} (coordinator)` : displayName(member),
        other: member,
      })));
      return;
    }
    const agencyUsers = candidate.agency_users;
    if (agencyUsers.length === 1) this.open(agencyUsers[0]);
    else this.toggle(agencyUsers.map((agencyUser) => ({ text: displayName(agencyUser), other: agencyUser })));
  }

  toggle(choices) {
    const open = this.menu.hidden;
    this.button.setAttribute("aria-haspopup", "menu");
    this.menu.replaceChildren(...choices.map(({ text, other }) => el("button", {
      type: "button",
      role: "menuitem",
      text,
      onclick: () => {
        this.setOpen(false);
        this.open(other);
      },
    })));
    this.setOpen(open);
    if (open) this.menu.querySelector('[role="menuitem"]')?.focus();
  }

  items() {
    return [...this.menu.querySelectorAll('[role="menuitem"]')];
  }

  onKey(event) {
    const items = this.items();
    const index = items.indexOf(document.activeElement);
    const moves = {
      ArrowDown: () => (index + 1) % items.length,
      ArrowUp: () => (index - 1 + items.length) % items.length,
      Home: () => 0,
      End: () => items.length - 1,
    };
    if (event.key in moves) {
      event.preventDefault();
      items[moves[event.key]()]?.focus();
    } else if (event.key === "Escape") {
      // Closes the menu only, not the dialog around it.
      event.preventDefault();
      event.stopPropagation();
      this.setOpen(false);
      this.button.focus();
    }
  }

  setOpen(open) {
    this.menu.hidden = !open;
    if (this.button.hasAttribute("aria-haspopup")) this.button.setAttribute("aria-expanded", String(open));
  }

  // The private thread with `other`, ready to write in.
  open(other) {
    this.conversation.startPrivate(other);
    this.dispatchEvent(new CustomEvent("am-focus-compose", { bubbles: true }));
  }
}

customElements.define("agency-private-menu", AgencyPrivateMenu);
