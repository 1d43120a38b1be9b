// <agency-message-list>: the selected thread's messages, oldest first, with "Load earlier
// messages" above them and a menu to delete one's own. It reads what it shows (while the
// tab is visible) and takes live messages and deletions from the socket. Part of
// <agency-messages>, which hands it its `conversation`.

import { announce, api, client, el, listen } from "./am-shared.js";

const PAGE = 50;
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

class AgencyMessageList extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.thread = null; // the thread shown
    this.items = new Map(); // message id -> its <li>
    this.earlier = el("button", { type: "button", class: "am-earlier", hidden: true, text: "Load earlier messages", onclick: () => this.loadEarlier() });
    this.log = el("ol", { class: "am-log", role: "log", "aria-live": "polite", "aria-label": "Messages in this conversation" });
    this.replaceChildren(this.earlier, this.log);
    this.stopListening = [
      listen(this.conversation, {
        show: () => this.isOpen() && this.show(),
        sent: (e) => this.onSent(e.detail),
        lost: () => this.clear(),
      }),
      listen(this.client, {
        "message.created": (e) => this.onCreated(e.detail),
        "message.deleted": (e) => this.remove(e.detail.message_id),
      }),
    ];
  }

  disconnectedCallback() {
    for (const stop of this.stopListening) stop();
  }

  isOpen() {
    return this.closest("dialog")?.open ?? true;
  }

  clear() {
    this.items.clear();
    this.log.replaceChildren();
  }

  // Shows the selected thread from its newest page, then reads it.
  async show() {
    const thread = this.conversation.selected;
    if (!thread) return;
    this.thread = thread;
    this.clear();
    announce(this, "");
    if (thread.id === null) {
      this.earlier.hidden = true;
      announce(this, "No messages yet. Write the first one.");
      return;
    }
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=${PAGE}`).catch(() => null);
    if (!page || this.thread !== thread) return; // failed (the next reload shows it), or superseded
    this.earlier.hidden = !page.has_more;
    for (const message of page.messages) this.insert(message);
    this.scrollToEnd();
    await this.markRead();
  }

  async loadEarlier() {
    const thread = this.thread;
    const first = Math.min(...this.items.keys());
    if (!thread?.id || first === Infinity) return;
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=${PAGE}&before=${first}`);
    if (this.thread !== thread) return;
    for (const message of page.messages) this.insert(message);
    this.earlier.hidden = !page.has_more;
  }

  markRead() {
    const newest = Math.max(0, ...this.items.keys());
    return this.conversation.markRead(this.thread.id, newest);
  }

  // --- live -------------------------------------------------------------------------------

  onCreated(frame) {
    if (!this.isOpen() || !this.thread?.id || frame.thread !== this.thread.id) return;
    announce(this, "");
    this.insert(frame.message);
    this.scrollToEnd();
    if (frame.message.author.id !== this.conversation.user?.id) {
      this.conversation.countArrival(frame.thread);
      this.markRead();
    }
  }

  onSent(message) {
    if (message.thread !== this.thread?.id) return;
    this.insert(message);
    this.scrollToEnd();
  }

  remove(messageId) {
    this.items.get(messageId)?.remove();
    this.items.delete(messageId);
  }

  // --- items ------------------------------------------------------------------------------

  // In id order, whatever order messages arrive in (history, live, an answer to a send).
  insert(message) {
    if (message.deleted || this.items.has(message.id)) return;
    const later = Math.min(...[...this.items.keys()].filter((id) => id > message.id));
    const item = this.item(message);
    this.log.insertBefore(item, this.items.get(later) ?? null);
    this.items.set(message.id, item);
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  item(message) {
    const mine = message.author.id === this.conversation.user?.id;
    const side = message.author.kind === "agency" ? "agency" : "hiring";
    const meta = el("div", { class: "am-meta" },
      el("span", { class: "am-author", text: message.author.name }),
      el("span", { class: "am-side", text: side === "agency" ? "Agency" : "Hiring team" }),
      el("time", { datetime: message.created_at, text: timeFormat.format(new Date(message.created_at)) }),
      mine ? this.actionsMenu(message) : null);
    return el("li", { class: `am-message am-${side}${mine ? " am-mine" : ""}`, "data-id": String(message.id) },
      meta, el("p", { class: "am-body", text: message.body ?? "" }));
  }

  actionsMenu(message) {
    const menu = el("div", { role: "menu", class: "am-menu", hidden: true });
    const button = el("button", {
      type: "button",
      class: "am-actions",
      "aria-label": "Message actions",
      "aria-haspopup": "menu",
      "aria-expanded": "false",
      text: "⋯",
      onclick: () => setOpen(menu.hidden),
    });
    const setOpen = (open) => {
      menu.hidden = !open;
      button.setAttribute("aria-expanded", String(open));
      if (open) menu.querySelector('[role="menuitem"]').focus();
    };
    menu.append(el("button", {
      type: "button",
      role: "menuitem",
      text: "Delete",
      onclick: () => {
        setOpen(false);
        this.delete(message);
      },
      onkeydown: (e) => {
        if (e.key !== "Escape") return;
        e.preventDefault(); // closes the menu only, not the dialog around it
        setOpen(false);
        button.focus();
      },
    }));
    return el("span", { class: "am-actions-wrap" }, button, menu);
  }

  async delete(message) {
    try {
      await this.client.remove(message.id);
      this.remove(message.id);
    } catch (error) {
      announce(this, `Could not delete: ${error.message}`);
    }
  }
}

customElements.define("agency-message-list", AgencyMessageList);
