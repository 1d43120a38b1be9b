// <agency-message-list>: the selected thread's messages, oldest first, with "Load earlier
// messages" above them, a "New" divider above the first unread one, and a menu to delete
// one's own (after a confirmation). A deleted message stays in place as a tombstone. It
// reads what it shows while the page is visible, and on coming back to the page; it takes
// live messages and deletions from the socket. Part of <agency-messages>, which hands it
// its `conversation`.

import { announce, api, client, displayName, el, listen } from "./am-shared.js";

const PAGE = 50;
const MAX_PAGES_BACK = 20; // how far opening at a message pages back to reach it
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

class AgencyMessageList extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.thread = null; // the thread shown
    this.items = new Map(); // message id -> its <li>
    this.earlier = el("button", { type: "button", class: "am-earlier", hidden: true, text: "Load earlier messages", onclick: () => this.loadEarlier() });
    this.log = el("ol", { class: "am-log", role: "log", "aria-live": "polite", "aria-label": "Messages in this conversation" });
    // Shown while a thread's first page loads, so that a slow network shows no empty panel.
    this.loading = el("p", { class: "am-loading", hidden: true, text: "Loading messages…" });
    this.divider = el("li", { role: "separator", class: "am-divider", "aria-label": "New messages" }, el("span", { text: "New" }));
    this.target = null; // the message id to open at (from a link), once
    this.confirm = this.confirmDialog();
    this.replaceChildren(this.loading, this.earlier, this.log, this.confirm);
    this.stopListening = [
      listen(document, { visibilitychange: () => this.onVisible() }),
      listen(this.conversation, {
        show: () => this.isOpen() && this.show(),
        sent: (e) => this.onSent(e.detail),
        lost: () => {
          this.setLoading(false);
          this.clear();
        },
      }),
      listen(this.client, {
        "message.created": (e) => this.onCreated(e.detail),
        "message.deleted": (e) => this.tombstone(e.detail.message_id),
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

  // Shows the selected thread from its newest page, at its first unread message (with the
  // "New" divider above it) or else at the message asked for, or at its end; then reads it.
  // `fresh`: drawn anew even when it is the thread shown already (the dialog opens).
  async show({ fresh = false } = {}) {
    const thread = this.conversation.selected;
    if (!thread) {
      // Opened before the conversation has loaded: its load shows the thread.
      this.setLoading(!this.conversation.settled);
      return;
    }
    if (!fresh && thread.id !== null && thread.id === this.thread?.id) {
      // A drawing under way places the view first: measured before it ends, an empty list
      // would read as "scrolled to the end" and the refresh would scroll away from the
      // message asked for.
      await this.drawn;
      if (this.thread?.id === thread.id) await this.refresh(thread);
      return;
    }
    this.drawn = this.draw(thread);
    await this.drawn;
  }

  async draw(thread) {
    const target = this.target;
    this.target = null;
    this.thread = thread;
    const drawing = (this.drawing = (this.drawing ?? 0) + 1);
    const superseded = () => drawing !== this.drawing || this.thread?.id !== thread.id;
    this.clear();
    announce(this, "");
    if (thread.id === null) {
      this.setLoading(false);
      this.earlier.hidden = true;
      announce(this, "No messages yet. Write the first one.");
      return;
    }
    this.earlier.hidden = true;
    this.setLoading(true);
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=${PAGE}`).catch(() => null);
    if (superseded()) return; // the newer drawing owns the loading state
    this.setLoading(false);
    if (!page) {
      announce(this, "Could not load the messages. They show once the connection is back.");
      return; // the next reload (on reconnecting) draws it again
    }
    this.earlier.hidden = !page.has_more;
    for (const message of page.messages) this.insert(message);
    const unread = thread.unread || 0;
    const reached = () => (unread ? this.othersMessages().length >= unread : !target || this.items.has(target));
    for (let pages = 0; !reached() && !this.earlier.hidden && pages < MAX_PAGES_BACK; pages += 1) {
      if (!(await this.loadEarlier()) || superseded()) return;
    }
    const divider = this.placeDivider(unread);
    const at = divider ?? this.items.get(target);
    if (at) this.scrollTo(at);
    else this.scrollToEnd();
    await this.markRead();
  }

  // The thread shown already, shown again (the conversation reloaded, say after a
  // reconnect): what is new joins what is shown, which stays where the user scrolled it.
  async refresh(thread) {
    this.thread = thread;
    const atEnd = this.log.scrollTop + this.log.clientHeight >= this.log.scrollHeight - 4;
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=${PAGE}`).catch(() => null);
    if (!page || this.thread?.id !== thread.id) return;
    for (const message of page.messages) this.update(message);
    if (atEnd) this.scrollToEnd();
    await this.markRead();
  }

  // Loads the page before the first message shown; false when superseded or failed.
  async loadEarlier() {
    const thread = this.thread;
    const first = Math.min(...this.items.keys());
    if (!thread?.id || first === Infinity) return false;
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=${PAGE}&before=${first}`).catch(() => null);
    if (!page || this.thread?.id !== thread.id) return false;
    for (const message of page.messages) this.insert(message);
    this.earlier.hidden = !page.has_more;
    return true;
  }

  markRead() {
    if (!this.thread?.id) return Promise.resolve();
    const newest = Math.max(0, ...this.items.keys());
    return this.conversation.markRead(this.thread.id, newest);
  }

  // Back on a page left with the thread open: what came meanwhile is read now, under the
  // "New" divider.
  onVisible() {
    if (document.visibilityState !== "visible" || !this.isOpen() || !this.thread?.id) return;
    const divider = this.placeDivider();
    if (divider) this.scrollTo(divider);
    this.markRead();
  }

  // The messages shown that others wrote and that are not deleted, oldest first: the
  // unread ones are the newest of them (a read marker is a message id).
  othersMessages() {
    const me = this.conversation.user?.id;
    return [...this.items.entries()]
      .filter(([, item]) => item.dataset.author !== me && !item.classList.contains("am-deleted"))
      .sort(([a], [b]) => a - b)
      .map(([, item]) => item);
  }

  // Puts the "New" divider above the first of `unread` unread messages, if any is shown;
  // returns it.
  placeDivider(unread = this.findThreadUnread()) {
    const others = this.othersMessages();
    const first = unread > 0 ? others[Math.max(0, others.length - unread)] : null;
    if (!first) return null;
    this.log.insertBefore(this.divider, first);
    return this.divider;
  }

  findThreadUnread() {
    return this.conversation.findById(this.thread?.id)?.unread ?? this.thread?.unread ?? 0;
  }

  // --- live -------------------------------------------------------------------------------

  onCreated(frame) {
    if (!this.isOpen() || !this.thread?.id || frame.thread !== this.thread.id) return;
    announce(this, "");
    this.insert(frame.message);
    if (document.visibilityState === "visible") this.scrollToEnd(); // else: at the divider on return
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

  setLoading(loading) {
    this.loading.hidden = !loading;
    if (loading) this.log.setAttribute("aria-busy", "true");
    else this.log.removeAttribute("aria-busy");
  }

  // The server's copy of a message shown or not: one shown that differs (deleted since, or
  // its author renamed or erased) is drawn again in place.
  update(message) {
    const item = this.items.get(message.id);
    if (!item) {
      this.insert(message);
      return;
    }
    if (message.deleted && !item.message.deleted) {
      this.tombstone(message.id, { server: message });
      return;
    }
    if (sameAsShown(item.message, message)) return;
    const focused = item.contains(document.activeElement) ? document.activeElement : null;
    const fresh = this.item(message);
    item.replaceWith(fresh);
    this.items.set(message.id, fresh);
    if (focused) (fresh.querySelector(".am-actions") ?? this.nextActions(fresh))?.focus();
  }

  // A deleted message keeps its place, as a tombstone. When the focus was on it (or it was
  // deleted from here), the focus goes on: to the next message's menu, or to the compose box.
  // `server`: the server's copy, whose author may read differently now (an erased person).
  tombstone(messageId, { moveFocus = false, server = null } = {}) {
    let item = this.items.get(messageId);
    if (!item) return;
    const focusWasHere = moveFocus || item.contains(document.activeElement);
    if (!item.classList.contains("am-deleted")) { // (the live event and the ack both come)
      const stone = this.item({ ...(server ?? item.message), deleted: true, body: null });
      item.replaceWith(stone);
      this.items.set(messageId, stone);
      item = stone;
    }
    if (!focusWasHere) return;
    const next = this.nextActions(item);
    if (next) next.focus();
    else this.dispatchEvent(new CustomEvent("am-focus-compose", { bubbles: true }));
  }

  nextActions(item) {
    for (let next = item.nextElementSibling; next; next = next.nextElementSibling) {
      const actions = next.querySelector(".am-actions");
      if (actions) return actions;
    }
    return null;
  }

  // --- items ------------------------------------------------------------------------------

  // In id order, whatever order messages arrive in (history, live, an answer to a send).
  insert(message) {
    if (this.items.has(message.id)) return;
    const later = this.items.get(Math.min(...[...this.items.keys()].filter((id) => id > message.id)));
    const item = this.item(message);
    // Above the divider when going before the first unread message: older ones are read.
    this.log.insertBefore(item, later && later.previousElementSibling === this.divider ? this.divider : (later ?? null));
    this.items.set(message.id, item);
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  scrollTo(node) {
    this.log.scrollTop += node.getBoundingClientRect().top - this.log.getBoundingClientRect().top - 8;
  }

  item(message) {
    const mine = message.author.id === this.conversation.user?.id;
    const side = message.author.kind === "agency" ? "agency" : "hiring";
    const meta = el("div", { class: "am-meta" },
      el("span", { class: "am-author", text: displayName(message.author) }),
      el("span", { class: "am-side", text: side === "agency" ? "Agency" : "Hiring team" }),
      el("time", { datetime: message.created_at, text: timeFormat.format(new Date(message.created_at)) }),
      mine && !message.deleted ? this.actionsMenu(message) : null);
    const text = message.deleted
      ? el("p", { class: "am-tombstone", text: "Message deleted" })
      : el("p", { class: "am-body", text: message.body ?? "" });
    const item = el("li", {
      class: `am-message am-${side}${mine ? " am-mine" : ""}${message.deleted ? " am-deleted" : ""}`,
      "data-id": String(message.id),
      "data-author": message.author.id,
    }, meta, text);
    item.message = message;
    return item;
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
        this.askDelete(message, button);
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

  // --- deleting, after a confirmation ---------------------------------------------------

  confirmDialog() {
    const title = el("h3", { id: `am-confirm-title-${this.conversation.candidateId}`, text: "Delete this message?" });
    const text = el("p", { id: `am-confirm-text-${this.conversation.candidateId}`, text: "It will show as deleted to everyone in this conversation." });
    const cancel = el("button", { type: "button", class: "am-cancel", text: "Cancel", onclick: () => dialog.close("") });
    const confirm = el("button", { type: "button", class: "am-confirm-delete", text: "Delete", onclick: () => dialog.close("delete") });
    const dialog = el("dialog", { role: "alertdialog", class: "am-confirm", "aria-labelledby": title.id, "aria-describedby": text.id },
      title, text, el("div", { class: "am-confirm-buttons" }, cancel, confirm));
    // Escape closes this dialog alone, not the one around it.
    dialog.addEventListener("cancel", (e) => e.stopPropagation());
    dialog.addEventListener("close", (e) => {
      e.stopPropagation();
      const pending = this.pendingDelete;
      this.pendingDelete = null;
      if (!pending) return;
      if (dialog.returnValue === "delete") this.delete(pending.message);
      else pending.button.focus();
    });
    return dialog;
  }

  askDelete(message, button) {
    this.pendingDelete = { message, button };
    this.confirm.returnValue = "";
    this.confirm.showModal();
    this.confirm.querySelector(".am-cancel").focus(); // the choice that loses nothing
  }

  async delete(message) {
    try {
      await this.client.remove(message.id);
      this.tombstone(message.id, { moveFocus: true });
    } catch (error) {
      announce(this, `Could not delete: ${error.message}`);
      this.items.get(message.id)?.querySelector(".am-actions")?.focus();
    }
  }
}

// Whether an item drawn from `shown` reads as one drawn from `current` would.
function sameAsShown(shown, current) {
  return Boolean(shown.deleted) === Boolean(current.deleted)
    && (shown.deleted || shown.body === current.body)
    && displayName(shown.author) === displayName(current.author)
    && shown.author.kind === current.author.kind;
}

customElements.define("agency-message-list", AgencyMessageList);
