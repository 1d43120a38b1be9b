// <agency-thread-tabs>: the dialog's tabs, one per thread, each with its blue dot; private
// threads carry a lock. One row, scrolling sideways when the threads do not fit. Arrow keys,
// Home and End move between them (a roving tabindex). Part of <agency-messages>, which hands
// it its `conversation`.

import { blueDot, el, icon, listen } from "./am-shared.js";

const LOCK = ["M7 11h10a2 2 0 0 1 2 2v6a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2v-6a2 2 0 0 1 2-2z", "M8 11V8a4 4 0 0 1 8 0v3"]; // a padlock

const KEY_MOVES = {
  ArrowRight: (index) => index + 1,
  ArrowLeft: (index) => index - 1,
  Home: () => 0,
  End: (index, count) => count - 1,
};

class AgencyThreadTabs extends HTMLElement {
  connectedCallback() {
    this.tablist = el("div", { role: "tablist", class: "am-tabs", "aria-label": "Conversations" });
    this.replaceChildren(this.tablist);
    this.stopListening = listen(this.conversation, { change: () => this.render() });
    this.render();
  }

  disconnectedCallback() {
    this.stopListening();
  }

  // Tabs are updated in place, keyed by thread: a count that changes (a message arrives)
  // leaves the tab that has the keyboard focused, and a screen reader on it undisturbed.
  render() {
    const { threads, selected } = this.conversation;
    const existing = new Map(this.tabs().map((tab) => [tab.dataset.key, tab]));
    const tabs = threads.map((thread) => {
      const tab = existing.get(thread.key) ?? this.tab(thread);
      existing.delete(thread.key);
      this.update(tab, thread, thread.key === selected?.key);
      return tab;
    });
    for (const gone of existing.values()) gone.remove();
    tabs.forEach((tab, index) => {
      if (this.tablist.children[index] !== tab) this.tablist.insertBefore(tab, this.tablist.children[index] ?? null);
    });
    const current = tabs.find((tab) => tab.dataset.key === selected?.key);
    if (current && current.dataset.key !== this.shownKey) {
      this.shownKey = current.dataset.key;
      current.scrollIntoView?.({ block: "nearest", inline: "nearest" });
    }
  }

  tab(thread) {
    const tab = el("button", {
      type: "button",
      role: "tab",
      class: "am-tab",
      "data-key": thread.key,
      onclick: () => this.conversation.select(this.conversation.find(tab.dataset.key) ?? thread),
      onkeydown: (e) => this.onKey(e),
    }, thread.kind === "private" ? icon(LOCK, { size: 12, className: "am-lock" }) : null, el("span", { class: "am-tab-label" }), blueDot({ hidden: true }));
    return tab;
  }

  update(tab, thread, selected) {
    tab.setAttribute("aria-selected", selected ? "true" : "false");
    tab.tabIndex = selected ? 0 : -1;
    tab.setAttribute("aria-label", thread.unread ? `${thread.label}, ${thread.unread} unread` : thread.label);
    // The tab shows the person's name alone (the lock says private); its accessible name,
    // which contains what it shows, is the full label.
    const label = tab.querySelector(".am-tab-label");
    const text = shortLabel(this.conversation.user, thread);
    if (label.textContent !== text) label.textContent = text;
    tab.querySelector(".blue-dot").hidden = !thread.unread;
  }

  tabs() {
    return [...this.tablist.querySelectorAll('[role="tab"]')];
  }

  onKey(event) {
    const move = KEY_MOVES[event.key];
    if (!move) return;
    event.preventDefault();
    const tabs = this.tabs();
    const next = move(tabs.indexOf(event.currentTarget), tabs.length);
    const target = tabs[(next + tabs.length) % tabs.length];
    target.focus();
    target.click();
  }
}

function shortLabel(user, thread) {
  const other = thread.kind === "private" && user?.kind === "agency" ? thread.member : thread.agency_user;
  if (thread.kind === "agency" && user?.kind === "agency") return thread.label;
  return other?.name || thread.label;
}

customElements.define("agency-thread-tabs", AgencyThreadTabs);
