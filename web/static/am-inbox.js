// <agency-inbox [href-template="/candidates/{candidate}?thread={thread}&message={message}"]>:
// the top bar's inbox across candidates. A button shows the user's total unread; it opens a
// dropdown (a disclosure) of the latest conversations from GET /api/v1/conversations, each
// a link to the conversation at its last message. `href-template` lets a host ATS send the
// links to its own profile page; by default they go to the demo host's.
//
// The total moves with `unread` frames alone (each carries `total_unread`); it is loaded
// from GET /api/v1/unread at first and after every reconnect (frames are not replayed).
// While the dropdown is open, unread frames make it fetch its first page again, debounced.
//
// Also home of the helpers the candidate list and <agency-seen-by> share: previews and
// relative times.

import { api, client, displayName, el, icon, listen, me } from "./am-shared.js";

const INBOX = "M3 13l3-8h12l3 8v6a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1v-6zm0 0h5l1 3h6l1-3h5"; // an inbox tray

const DEFAULT_TEMPLATE = "/candidates/{candidate}?thread={thread}&message={message}";
const PAGE = 10;
const REFETCH_DELAY_MS = 300; // a burst of frames (one per thread of a batch) makes one fetch

let inboxes = 0; // ids for aria-controls, unique on the page

class AgencyInbox extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.total = 0;
    this.framesSeen = 0; // a load answered after a frame must not undo it
    this.fetches = 0; // only the latest dropdown fetch is drawn
    this.refetchTimer = null;
    const id = `am-inbox-${++inboxes}`;
    this.badge = el("span", { class: "am-inbox-badge", "aria-hidden": "true", hidden: true });
    this.button = el("button", {
      type: "button",
      class: "am-inbox-button",
      "aria-expanded": "false",
      "aria-controls": id,
      "aria-label": "Inbox",
      onclick: () => this.toggle(),
    }, icon(INBOX, { className: "am-inbox-icon" }), el("span", { class: "am-inbox-label", text: "Inbox" }), this.badge);
    this.status = el("p", { class: "am-inbox-status" });
    this.list = el("ul", { class: "am-inbox-list", "aria-label": "Latest conversations" });
    this.panel = el("div", { class: "am-inbox-panel", id, hidden: true },
      el("p", { class: "am-inbox-title", "aria-hidden": "true", text: "Latest conversations" }), this.status, this.list);
    this.replaceChildren(this.button, this.panel);
    this.stopListening = [
      listen(this.client, {
        unread: (e) => this.onUnread(e.detail),
        "unread.summary": (e) => this.onUnread(e.detail),
        connected: () => {
          this.loadTotal();
          if (this.isOpen) this.fetchPage();
        },
      }),
      listen(this, { keydown: (e) => this.onKey(e), focusout: (e) => this.onFocusOut(e) }),
      listen(document, { pointerdown: (e) => this.isOpen && !this.contains(e.target) && this.close() }),
    ];
    if (this.client.connected) this.loadTotal(); // else on `connected`
  }

  disconnectedCallback() {
    for (const stop of this.stopListening) stop();
    clearTimeout(this.refetchTimer);
    this.fetches += 1;
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  // --- the total -----------------------------------------------------------------------

  async loadTotal() {
    const framesBefore = this.framesSeen;
    const data = await api("/api/v1/unread").catch(() => null);
    if (!data || this.framesSeen !== framesBefore) return; // a frame since says it better
    this.setTotal(data.candidates.reduce((sum, c) => sum + (c.unread || 0), 0));
  }

  onUnread(frame) {
    if (typeof frame.total_unread !== "number") return;
    this.framesSeen += 1;
    this.setTotal(frame.total_unread);
    if (this.isOpen) {
      clearTimeout(this.refetchTimer);
      this.refetchTimer = setTimeout(() => this.fetchPage(), REFETCH_DELAY_MS);
    }
  }

  setTotal(total) {
    this.total = total;
    this.badge.textContent = total > 99 ? "99+" : String(total);
    this.badge.hidden = total === 0;
    this.button.setAttribute("aria-label", total ? `Inbox, ${total} unread` : "Inbox");
  }

  // --- the dropdown --------------------------------------------------------------------

  toggle() {
    if (this.isOpen) this.close();
    else this.open();
  }

  open() {
    this.panel.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    if (!this.list.children.length) this.status.textContent = "Loading…";
    this.fetchPage();
  }

  close({ focus = false } = {}) {
    clearTimeout(this.refetchTimer);
    this.panel.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
    if (focus) this.button.focus();
  }

  async fetchPage() {
    const fetch = ++this.fetches;
    const [user, page] = await Promise.all([me(), api(`/api/v1/conversations?limit=${PAGE}`)]).catch(() => []);
    if (fetch !== this.fetches) return;
    if (!page) {
      if (!this.list.children.length) this.status.textContent = "Could not load the conversations.";
      return;
    }
    this.draw(user, page.conversations);
  }

  draw(user, conversations) {
    // Redrawn while the user moves through it: the focus stays on the same conversation.
    const focused = this.list.contains(document.activeElement) ? document.activeElement.dataset.thread : null;
    this.status.textContent = conversations.length ? "" : "No conversations yet.";
    this.list.replaceChildren(...conversations.map((c) => this.item(user, c)));
    if (focused) this.list.querySelector(`a[data-thread="${CSS.escape(focused)}"]`)?.focus();
  }

  item(user, conversation) {
    const unread = conversation.unread || 0;
    const last = conversation.last_message;
    const link = el("a", {
      href: this.href(conversation),
      class: `am-inbox-item${unread ? " am-unread" : ""}`,
      "data-thread": String(conversation.id),
    },
    el("span", { class: "am-inbox-head" },
      el("strong", { class: "am-inbox-candidate", text: conversation.candidate_name ?? conversation.candidate }),
      last ? relativeTime(last.created_at) : null),
    el("span", { class: "am-inbox-who", text: otherSide(user, conversation) }),
    el("span", { class: "am-inbox-preview" },
      el("span", { class: "am-inbox-text", text: preview(last, user) }),
      unread ? el("span", { class: "am-inbox-count", "aria-hidden": "true", text: String(unread) }) : null),
    // Said once, in words, where the eye reads a number.
    unread ? el("span", { class: "am-inbox-sr", text: `, ${unread} unread` }) : null);
    return el("li", {}, link);
  }

  href(conversation) {
    const template = this.getAttribute("href-template") || DEFAULT_TEMPLATE;
    const values = { candidate: conversation.candidate, thread: conversation.id, message: conversation.last_message?.id ?? "" };
    return template.replace(/\{(candidate|thread|message)\}/g, (_, key) => encodeURIComponent(values[key]));
  }

  // --- the keyboard: a disclosure whose links the arrow keys move through ---------------

  onKey(event) {
    if (event.key === "Escape" && this.isOpen) {
      event.preventDefault();
      event.stopPropagation(); // closes the dropdown alone
      this.close({ focus: true });
      return;
    }
    const links = [...this.list.querySelectorAll("a")];
    if (!this.isOpen || !links.length) return;
    const index = links.indexOf(document.activeElement);
    const next = {
      ArrowDown: () => links[Math.min(index + 1, links.length - 1)],
      ArrowUp: () => (index <= 0 ? this.button : links[index - 1]),
      Home: () => (index === -1 ? null : links[0]),
      End: () => (index === -1 ? null : links.at(-1)),
    }[event.key]?.();
    if (!next) return;
    event.preventDefault();
    next.focus();
  }

  // Tabbing out of it closes it, as leaving a menu would.
  onFocusOut(event) {
    if (this.isOpen && event.relatedTarget && !this.contains(event.relatedTarget)) this.close();
  }
}

// The other side of a conversation, as the user's tab for it reads in the messages dialog.
export function otherSide(user, conversation) {
  const agencySide = user?.kind === "agency";
  const other = conversation.kind === "private" && agencySide ? conversation.member : conversation.agency_user;
  const name = agencySide && conversation.kind !== "private" ? "Hiring team" : displayName(other);
  return conversation.kind === "private" ? `Private: ${name}` : name;
}

// One line of a message: who wrote it and what, or that it is gone.
export function preview(message, user) {
  if (!message) return "No messages yet";
  if (message.deleted) return "Message deleted";
  const author = message.author?.id === user?.id ? "You" : (message.author?.name ?? "");
  const text = (message.body ?? "").replace(/\s+/g, " ").trim();
  return author ? `${author}: ${text}` : text;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
const exact = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const STEPS = [["year", 31_536_000], ["month", 2_592_000], ["week", 604_800], ["day", 86_400], ["hour", 3_600], ["minute", 60]];

// "5 min. ago", with the exact time on hover (and for machines, in `datetime`).
export function relativeTime(iso, { prefix = "" } = {}) {
  const at = new Date(iso);
  const seconds = Math.round((at.getTime() - Date.now()) / 1000);
  let text = "just now";
  for (const [unit, size] of STEPS) {
    if (Math.abs(seconds) >= size) {
      text = relative.format(Math.trunc(seconds / size), unit);
      break;
    }
  }
  return el("time", { datetime: iso, title: `${prefix}${exact.format(at)}`, class: "am-when", text });
}

export function exactTime(iso) {
  return exact.format(new Date(iso));
}

customElements.define("agency-inbox", AgencyInbox);
