// <agency-thread-tabs>: the dialog's tabs, one per thread, each with its blue dot. Arrow
// keys, Home and End move between them (a roving tabindex). Part of <agency-messages>,
// which hands it its `conversation`.

import { blueDot, el, listen } from "./am-shared.js";

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

  render() {
    // Counts change while a tab has the keyboard: the redrawn tab takes the focus back.
    const focusedKey = this.tablist.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    const { threads, selected } = this.conversation;
    this.tablist.replaceChildren(...threads.map((t) => this.tab(t, t.key === selected?.key)));
    if (focusedKey) this.tabs().find((tab) => tab.dataset.key === focusedKey)?.focus();
  }

  tab(thread, selected) {
    return el("button", {
      type: "button",
      role: "tab",
      class: "am-tab",
      "data-key": thread.key,
      "aria-selected": selected ? "true" : "false",
      tabindex: selected ? "0" : "-1",
      "aria-label": thread.unread ? `${thread.label}, ${thread.unread} unread` : thread.label,
      onclick: () => this.conversation.select(thread),
      onkeydown: (e) => this.onKey(e),
    }, el("span", { text: thread.label }), blueDot({ hidden: !thread.unread }));
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

customElements.define("agency-thread-tabs", AgencyThreadTabs);
