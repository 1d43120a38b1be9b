// <agency-message-list>: the selected thread's messages, oldest first, read as a chat:
// consecutive messages of one author grouped under one header, day separators, relative
// times (the exact one on hover and focus), initials avatars in the colour of the author's
// side, and links for http(s) URLs. "Load earlier messages" is above them, a "New" divider
// above the first unread one, and a menu to delete one's own (after a confirmation). A
// deleted message stays in place as a tombstone. Messages this tab sends show at once, as
// "Sending…", and settle when the server has them, or say "Not sent" with a Retry. It reads
// what it shows while the page is visible, and on coming back to the page; it takes live
// messages and deletions from the socket. Part of <agency-messages>, which hands it its
// `conversation`.

import { announce, api, client, displayName, el, listen } from "./am-shared.js";

const PAGE = 50;
const MAX_PAGES_BACK = 20; // how far opening at a message pages back to reach it
const GROUP_WITHIN_MS = 5 * 60_000; // one author's messages this close share a header
const TICK_MS = 20_000; // how often relative times are brought up to date
const exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayYearFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });

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
    this.outgoingItems = new Map(); // client_id -> the <li> of a message on its way, or failed
    this.tick = setInterval(() => this.isOpen() && this.refreshTimes(), TICK_MS);
    this.stopListening = [
      () => clearInterval(this.tick),
      listen(document, { visibilitychange: () => this.onVisible() }),
      listen(this.conversation, {
        show: () => this.isOpen() && this.show(),
        sent: (e) => this.onSent(e.detail),
        outgoing: (e) => this.onOutgoing(e.detail),
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
    this.outgoingItems.clear();
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
      this.showOutgoing(thread);
      if (!this.outgoingItems.size) announce(this, "No messages yet. Write the first one.");
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
    this.showOutgoing(thread);
    const divider = this.placeDivider(unread);
    this.regroup();
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
    this.regroup();
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
    // The view stays on what the user was reading: the page goes in above it.
    const fromEnd = this.log.scrollHeight - this.log.scrollTop;
    for (const message of page.messages) this.insert(message);
    this.regroup();
    this.log.scrollTop = this.log.scrollHeight - fromEnd;
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
    this.regroup();
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
    this.settle(frame.message.client_id); // (its ack may come after this event)
    this.regroup();
    if (document.visibilityState === "visible") this.scrollToEnd(); // else: at the divider on return
    if (frame.message.author.id !== this.conversation.user?.id) {
      this.conversation.countArrival(frame.thread);
      this.markRead();
    }
  }

  onSent(message) {
    if (message.thread !== this.thread?.id) {
      this.settle(message.client_id);
      return;
    }
    this.insert(message);
    this.settle(message.client_id);
    this.regroup();
    this.scrollToEnd();
  }

  // --- messages on their way ----------------------------------------------------------------

  // A message this tab sends, shown (or drawn again) in its state, at the end of the log.
  onOutgoing(entry) {
    const shown = this.outgoingItems.get(entry.clientId);
    if (entry.state === "discarded") {
      this.settle(entry.clientId);
      this.dispatchEvent(new CustomEvent("am-focus-compose", { bubbles: true }));
      return;
    }
    if (!this.thread || entry.key !== this.thread.key || !this.isOpen()) return;
    announce(this, this.client.connected ? "" : "Offline: the message will be sent when the connection is back.");
    const focusedRetry = shown?.contains(document.activeElement);
    const item = this.outgoingItem(entry);
    if (shown) shown.replaceWith(item);
    else this.log.append(item);
    this.outgoingItems.set(entry.clientId, item);
    this.regroup();
    if (!shown) this.scrollToEnd();
    if (focusedRetry) item.focus();
  }

  showOutgoing(thread) {
    for (const entry of this.conversation.outgoingIn(thread.key)) {
      if (this.outgoingItems.has(entry.clientId)) continue; // shown meanwhile
      const item = this.outgoingItem(entry);
      this.log.append(item);
      this.outgoingItems.set(entry.clientId, item);
    }
  }

  // The message with that client_id has arrived: its outgoing copy goes.
  settle(clientId) {
    const item = clientId ? this.outgoingItems.get(clientId) : null;
    if (!item) return;
    const hadFocus = item.contains(document.activeElement);
    item.remove();
    this.outgoingItems.delete(clientId);
    this.regroup();
    if (hadFocus) this.dispatchEvent(new CustomEvent("am-focus-compose", { bubbles: true }));
  }

  outgoingItem(entry) {
    const user = this.conversation.user ?? { id: "", name: "", kind: "member" };
    const failed = entry.state === "failed";
    const state = failed
      ? el("p", { class: "am-send-state am-failed-state" },
        el("span", { text: "Not sent — " }),
        el("button", { type: "button", class: "am-retry", text: "Retry", onclick: () => this.conversation.retry(entry.clientId) }),
        el("button", { type: "button", class: "am-discard", text: "Discard", onclick: () => this.conversation.discard(entry.clientId) }))
      : el("p", { class: "am-send-state", text: "Sending…" });
    const item = this.item({ id: null, author: user, body: entry.body, created_at: new Date().toISOString(), deleted: false }, { outgoing: true });
    item.classList.add("am-outgoing", failed ? "am-failed" : "am-pending");
    item.dataset.clientId = entry.clientId;
    item.tabIndex = -1;
    if (!failed) item.setAttribute("aria-busy", "true");
    item.querySelector(".am-content").append(state);
    return item;
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
    this.regroup();
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
      this.regroup();
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
    // Last of the messages stored, before those still on their way.
    const before = later ?? this.log.querySelector(".am-outgoing");
    this.log.insertBefore(item, before && before.previousElementSibling === this.divider ? this.divider : (before ?? null));
    this.items.set(message.id, item);
  }

  // Groups consecutive messages of one author (a few minutes apart, not across the "New"
  // divider), and puts a separator above each day's first message.
  regroup() {
    for (const day of this.log.querySelectorAll(".am-day")) day.remove();
    let previous = null;
    let previousDay = null;
    for (const node of [...this.log.children]) {
      if (!node.classList.contains("am-message")) {
        previous = null; // the "New" divider starts a group anew
        continue;
      }
      const at = new Date(node.dataset.at);
      const day = dayKey(at);
      if (day !== previousDay) {
        const separator = el("li", { role: "separator", class: "am-day", "aria-label": dayLabel(at) }, el("span", { text: dayLabel(at) }));
        this.log.insertBefore(separator, node.previousElementSibling === this.divider ? this.divider : node);
        previousDay = day;
        previous = null;
      }
      const continued = previous !== null
        && previous.dataset.author === node.dataset.author
        && at - new Date(previous.dataset.at) < GROUP_WITHIN_MS;
      node.classList.toggle("am-continued", continued);
      previous = node;
    }
  }

  // Relative times move on ("just now", "2 min ago"...), and past midnight, the days.
  refreshTimes() {
    for (const time of this.log.querySelectorAll("time[datetime]")) {
      const text = relativeTime(new Date(time.dateTime));
      if (time.textContent !== text) time.textContent = text;
    }
    const today = dayKey(new Date());
    if (this.today !== undefined && this.today !== today) this.regroup();
    this.today = today;
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  scrollTo(node) {
    this.log.scrollTop += node.getBoundingClientRect().top - this.log.getBoundingClientRect().top - 8;
  }

  item(message, { outgoing = false } = {}) {
    const mine = message.author.id === this.conversation.user?.id;
    const side = message.author.kind === "agency" ? "agency" : "hiring";
    const at = new Date(message.created_at);
    const exact = exactFormat.format(at);
    // The author's name, then the side as a tag: an agency user's agency (the name reads
    // "Ann Agent · TalentCo" as a whole), or "Hiring team".
    const agency = message.author.agency?.name;
    const meta = el("div", { class: "am-meta" },
      el("span", { class: "am-author", text: message.author.name ?? "" },
        agency ? el("span", { class: "am-visually-hidden", text: " · " }) : null),
      el("span", { class: "am-side", text: agency ?? (side === "agency" ? "Agency" : "Hiring team") }),
      outgoing ? null : el("time", { datetime: message.created_at, title: exact, "aria-label": exact, tabindex: "0", text: relativeTime(at) }));
    const text = message.deleted
      ? el("p", { class: "am-tombstone", text: "Message deleted" })
      : el("p", { class: "am-body", dir: "auto" }, ...linkify(message.body ?? ""));
    const item = el("li", {
      class: `am-message am-${side}${mine ? " am-mine" : ""}${message.deleted ? " am-deleted" : ""}`,
      "data-id": message.id === null ? null : String(message.id),
      "data-author": message.author.id,
      "data-at": message.created_at,
    },
    el("span", { class: `am-avatar am-avatar-${side}`, "aria-hidden": "true", text: initials(message.author.name) }),
    el("div", { class: "am-content" }, meta, text),
    mine && !message.deleted && !outgoing ? this.actionsMenu(message) : null);
    item.message = message;
    return item;
  }

  actionsMenu(message) {
    const menu = el("div", {
      role: "menu",
      class: "am-menu",
      hidden: true,
      // Escape pressed elsewhere in the dialog closes this menu first (the innermost thing).
      "onam-dismiss": () => {
        const inside = menu.contains(document.activeElement);
        setOpen(false);
        if (inside) button.focus();
      },
    });
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
        e.stopPropagation();
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

// --- how messages read ---------------------------------------------------------------------

// "just now", "2 min ago", "3 h ago"; from six hours back, the time of day (the day
// separator above says which day).
export function relativeTime(at, now = new Date()) {
  const minutes = Math.floor((now - at) / 60_000);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  if (minutes < 6 * 60) return `${Math.floor(minutes / 60)} h ago`;
  return clockFormat.format(at);
}

function dayKey(at) {
  return `${at.getFullYear()}-${at.getMonth()}-${at.getDate()}`;
}

export function dayLabel(at, now = new Date()) {
  if (dayKey(at) === dayKey(now)) return "Today";
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (dayKey(at) === dayKey(yesterday)) return "Yesterday";
  return (at.getFullYear() === now.getFullYear() ? dayFormat : dayYearFormat).format(at);
}

// "Ann Archer" -> "AA"; one name -> its first letter.
export function initials(name) {
  const words = (name ?? "").trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words.at(-1)] : words;
  return letters.map((word) => [...word][0]).join("").toLocaleUpperCase();
}

// A message body as text nodes, with its http(s) URLs as links. Any other scheme
// (javascript:, data:...) stays text; the link's text is the URL as written.
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?'"]+$/;

export function linkify(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    let raw = match[0].replace(TRAILING, "");
    // A closing parenthesis belongs to the URL only when it opened one ("(see https://x)").
    while (raw.endsWith(")") && (raw.match(/\(/g) ?? []).length < (raw.match(/\)/g) ?? []).length) {
      raw = raw.slice(0, -1).replace(TRAILING, "");
    }
    let url;
    try {
      url = new URL(raw);
    } catch {
      continue;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") continue;
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(el("a", { href: url.href, rel: "noopener noreferrer", target: "_blank", text: raw }));
    last = match.index + raw.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

// Whether an item drawn from `shown` reads as one drawn from `current` would.
function sameAsShown(shown, current) {
  return Boolean(shown.deleted) === Boolean(current.deleted)
    && (shown.deleted || shown.body === current.body)
    && displayName(shown.author) === displayName(current.author)
    && shown.author.kind === current.author.kind;
}

customElements.define("agency-message-list", AgencyMessageList);
