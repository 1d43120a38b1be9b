// Custom elements an ATS drops into its own pages:
//   <agency-messages candidate="c1">       the message bubble and its dialog
//   <agency-unread-line candidate="c1">    the top bar's "new message" line
//   <agency-candidate-list>                candidates with their blue dots
// Every piece of user text is set with textContent: never parsed as HTML.

import { api, client } from "./am-client.js";

const timeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "short",
});

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function bubbleIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "18");
  svg.setAttribute("height", "18");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "am-bubble-icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z");
  svg.append(path);
  return svg;
}

let mePromise = null;
function me() {
  mePromise ??= api("/api/v1/me");
  return mePromise;
}

// --- the message bubble and its dialog -----------------------------------------------

class AgencyMessages extends HTMLElement {
  connectedCallback() {
    this.candidateId = this.getAttribute("candidate");
    this.client = client();
    this.threads = []; // {key, id|null, kind, agency_user, member, unread, label}
    this.selected = null;
    this.messages = new Map(); // message id -> element, for the selected thread
    this.hasMore = false;
    this.render();
    this.listeners = {
      "message.created": (e) => this.onCreated(e.detail),
      "message.deleted": (e) => this.onDeleted(e.detail),
      unread: (e) => e.detail.candidate === this.candidateId && this.onUnread(e.detail),
      "unread.summary": () => this.reload(),
      connected: () => this.reload(),
      reset: (e) => e.detail.candidate === this.candidateId && this.reload(),
      unsubscribed: (e) => e.detail.candidate === this.candidateId && this.onLostAccess(),
    };
    for (const [type, listener] of Object.entries(this.listeners)) this.client.addEventListener(type, listener);
    document.addEventListener("agency-messages:open", this.openListener = (e) => {
      if (e.detail.candidate === this.candidateId) this.open();
    });
    this.client.subscribe(this.candidateId);
    this.reload();
  }

  disconnectedCallback() {
    for (const [type, listener] of Object.entries(this.listeners)) this.client.removeEventListener(type, listener);
    document.removeEventListener("agency-messages:open", this.openListener);
    this.client.unsubscribe(this.candidateId);
  }

  render() {
    this.dot = el("span", { class: "blue-dot", hidden: true, "aria-hidden": "true" });
    this.bubble = el("button", {
      type: "button",
      class: "am-bubble",
      "aria-haspopup": "dialog",
      "aria-label": "Messages",
      onclick: () => this.open(),
    }, bubbleIcon(),
    el("span", { text: "Messages" }), this.dot);

    this.heading = el("h2", { id: `am-title-${this.candidateId}`, text: "Messages" });
    this.tabs = el("div", { role: "tablist", class: "am-tabs", "aria-label": "Conversations" });
    this.privately = el("button", { type: "button", class: "am-private", text: "Message privately", onclick: () => this.messagePrivately() });
    this.contacts = el("div", { role: "menu", class: "am-menu", hidden: true, "aria-label": "Message privately with" });
    this.log = el("ol", { class: "am-log", role: "log", "aria-live": "polite", "aria-label": "Messages in this conversation" });
    this.earlier = el("button", { type: "button", class: "am-earlier", hidden: true, text: "Load earlier messages", onclick: () => this.loadEarlier() });
    this.status = el("p", { class: "am-status", role: "status" });
    this.input = el("textarea", { id: `am-input-${this.candidateId}`, rows: "2", maxlength: "5000", required: true });
    this.form = el("form", { class: "am-compose", onsubmit: (e) => { e.preventDefault(); this.sendCurrent(); } },
      el("label", { for: this.input.id, text: "Message" }),
      this.input,
      el("button", { type: "submit", text: "Send" }));
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.sendCurrent(); }
    });
    this.panel = el("section", { role: "tabpanel", class: "am-panel" }, this.earlier, this.log, this.status, this.form);
    this.dialog = el("dialog", { class: "am-dialog", "aria-labelledby": this.heading.id },
      el("header", { class: "am-dialog-header" }, this.heading,
        el("button", { type: "button", class: "am-close", "aria-label": "Close", text: "×", onclick: () => this.dialog.close() })),
      el("div", { class: "am-toolbar" }, this.tabs, this.privately, this.contacts),
      this.panel);
    this.dialog.addEventListener("close", () => this.contacts.hidden = true);
    this.replaceChildren(this.bubble, this.dialog);
  }

  // --- state -------------------------------------------------------------------------

  async reload() {
    try {
      const [user, candidate, { threads }] = await Promise.all([
        me(),
        api(`/api/v1/candidates/${encodeURIComponent(this.candidateId)}`),
        api(`/api/v1/candidates/${encodeURIComponent(this.candidateId)}/threads`),
      ]);
      this.user = user;
      this.candidate = candidate;
      this.heading.textContent = `Messages about ${candidate.name}`;
      this.threads = this.threadList(user, candidate, threads);
      const keep = this.threads.find((t) => t.key === this.selected?.key) ?? this.threads[0] ?? null;
      this.selected = keep;
      this.renderTabs();
      this.renderUnread();
      if (this.dialog.open && this.selected) await this.showThread(this.selected);
    } catch (error) {
      if (error.status === 404) this.onLostAccess();
    }
  }

  threadList(user, candidate, threads) {
    const list = [];
    const label = (t) => {
      if (t.kind === "private") return `Private: ${user.kind === "agency" ? t.member.name : t.agency_user.name}`;
      return user.kind === "agency" ? "Hiring team" : t.agency_user.name;
    };
    for (const t of threads) list.push({ ...t, key: `${t.kind}:${t.agency_user.id}:${t.member?.id ?? ""}`, label: label(t) });
    // Agency threads not started yet still get a tab: the first message creates them.
    const agencyUsers = user.kind === "agency" ? [{ id: user.id, name: user.name, kind: "agency" }] : candidate.agency_users;
    for (const agencyUser of agencyUsers) {
      const key = `agency:${agencyUser.id}:`;
      if (!list.some((t) => t.key === key)) {
        const stub = { id: null, kind: "agency", agency_user: agencyUser, member: null, unread: 0, last_message: null, key };
        list.push({ ...stub, label: label(stub) });
      }
    }
    const order = (t) => (t.kind === "agency" ? 0 : 1);
    return list.sort((a, b) => order(a) - order(b) || a.label.localeCompare(b.label));
  }

  renderTabs() {
    this.tabs.replaceChildren(...this.threads.map((t) => {
      const selected = t.key === this.selected?.key;
      const dot = el("span", { class: "blue-dot", hidden: !t.unread, "aria-hidden": "true" });
      return el("button", {
        type: "button",
        role: "tab",
        class: "am-tab",
        "aria-selected": selected ? "true" : "false",
        tabindex: selected ? "0" : "-1",
        "aria-label": t.unread ? `${t.label}, ${t.unread} unread` : t.label,
        onclick: () => this.select(t),
        onkeydown: (e) => this.tabKeys(e),
      }, el("span", { text: t.label }), dot);
    }));
    const canGoPrivate = this.user?.kind === "agency" ? this.candidate?.private_contacts.length > 0 : this.candidate?.agency_users.length > 0;
    this.privately.hidden = !canGoPrivate;
  }

  tabKeys(event) {
    const tabs = [...this.tabs.querySelectorAll('[role="tab"]')];
    const index = tabs.indexOf(event.currentTarget);
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    const target = tabs[(next + tabs.length) % tabs.length];
    target.focus();
    target.click();
  }

  renderUnread() {
    const total = this.threads.reduce((sum, t) => sum + (t.unread || 0), 0);
    this.dot.hidden = total === 0;
    this.bubble.setAttribute("aria-label", total ? `Messages, ${total} unread` : "Messages");
  }

  onUnread(frame) {
    const thread = this.threads.find((t) => t.id === frame.thread);
    if (!thread) {
      this.reload(); // a thread this view has not seen yet (someone else started it)
      return;
    }
    thread.unread = frame.unread;
    this.renderTabs();
    this.renderUnread();
  }

  onLostAccess() {
    this.threads = [];
    this.renderTabs();
    this.renderUnread();
    this.log.replaceChildren();
    this.status.textContent = "You no longer have access to this candidate's messages.";
    this.form.hidden = true;
    this.privately.hidden = true;
  }

  // --- the dialog ----------------------------------------------------------------------

  async open() {
    if (!this.dialog.open) this.dialog.showModal();
    if (this.selected) await this.showThread(this.selected);
    this.input.focus();
  }

  async select(thread) {
    this.selected = thread;
    this.renderTabs();
    await this.showThread(thread);
  }

  async showThread(thread) {
    this.messages.clear();
    this.log.replaceChildren();
    this.status.textContent = "";
    this.form.hidden = false;
    this.panel.setAttribute("aria-label", thread.label);
    if (thread.id === null) {
      this.earlier.hidden = true;
      this.status.textContent = "No messages yet. Write the first one.";
      return;
    }
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=50`);
    if (this.selected?.key !== thread.key) return;
    this.hasMore = page.has_more;
    this.earlier.hidden = !page.has_more;
    for (const m of page.messages) this.append(m);
    this.scrollToEnd();
    await this.markRead(thread);
  }

  async loadEarlier() {
    const thread = this.selected;
    const first = [...this.messages.keys()].sort((a, b) => a - b)[0];
    if (!thread?.id || first === undefined) return;
    const page = await api(`/api/v1/threads/${thread.id}/messages?limit=50&before=${first}`);
    const anchor = this.log.firstChild;
    for (const m of page.messages) {
      if (!this.messages.has(m.id)) this.log.insertBefore(this.messageItem(m), anchor);
    }
    this.earlier.hidden = !page.has_more;
  }

  async markRead(thread) {
    const newest = Math.max(0, ...this.messages.keys());
    if (!thread.id || !newest || !thread.unread || document.visibilityState === "hidden") return;
    try {
      const ack = await this.client.read(thread.id, newest);
      thread.unread = ack.unread;
      this.renderTabs();
      this.renderUnread();
    } catch {
      // Counts stay as they are; the next unread event corrects them.
    }
  }

  append(message) {
    if (message.deleted || this.messages.has(message.id)) return;
    const item = this.messageItem(message);
    const later = [...this.messages.entries()].filter(([id]) => id > message.id).sort((a, b) => a[0] - b[0])[0];
    this.log.insertBefore(item, later ? later[1] : null);
  }

  messageItem(message) {
    const mine = message.author.id === this.user?.id;
    const side = message.author.kind === "agency" ? "agency" : "hiring";
    const when = new Date(message.created_at);
    const meta = el("div", { class: "am-meta" },
      el("span", { class: "am-author", text: message.author.name }),
      el("span", { class: "am-side", text: side === "agency" ? "Agency" : "Hiring team" }),
      el("time", { datetime: message.created_at, text: timeFormat.format(when) }));
    if (mine) meta.append(this.actionsMenu(message));
    const item = el("li", { class: `am-message am-${side}${mine ? " am-mine" : ""}`, "data-id": String(message.id) },
      meta, el("p", { class: "am-body", text: message.body ?? "" }));
    this.messages.set(message.id, item);
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
      onclick: () => {
        const show = menu.hidden;
        menu.hidden = !show;
        button.setAttribute("aria-expanded", String(show));
        if (show) menu.querySelector('[role="menuitem"]').focus();
      },
    });
    menu.append(el("button", {
      type: "button",
      role: "menuitem",
      text: "Delete",
      onclick: async () => {
        menu.hidden = true;
        try {
          await this.client.remove(message.id);
          this.onDeleted({ message_id: message.id, thread: message.thread });
        } catch (error) {
          this.status.textContent = `Could not delete: ${error.message}`;
        }
      },
      onkeydown: (e) => { if (e.key === "Escape") { menu.hidden = true; button.focus(); } },
    }));
    return el("span", { class: "am-actions-wrap" }, button, menu);
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  // --- live events --------------------------------------------------------------------

  onCreated(frame) {
    if (frame.candidate !== this.candidateId) return;
    const thread = this.threads.find((t) => t.id === frame.thread);
    if (!thread) {
      this.reload();
      return;
    }
    thread.last_message = frame.message;
    if (this.dialog.open && this.selected?.id === frame.thread) {
      this.status.textContent = "";
      this.append(frame.message);
      this.scrollToEnd();
      if (frame.message.author.id !== this.user?.id) {
        thread.unread = (thread.unread || 0) + 1;
        this.markRead(thread);
      }
    }
  }

  onDeleted(frame) {
    const item = this.messages.get(frame.message_id);
    if (item) {
      item.remove();
      this.messages.delete(frame.message_id);
    }
  }

  // --- writing --------------------------------------------------------------------------

  sendCurrent() {
    const body = this.input.value.trim();
    const thread = this.selected;
    if (!body || !thread) return;
    this.input.value = "";
    // One at a time, in the order typed: a second message must not overtake the first
    // (say, while the first one creates the conversation).
    this.sending = (this.sending ?? Promise.resolve()).then(() => this.deliver(thread, body));
  }

  async deliver(thread, body) {
    this.status.textContent = this.client.connected ? "" : "Offline: the message will be sent when the connection is back.";
    try {
      let target = this.threads.find((t) => t.key === thread.key) ?? thread;
      if (target.id === null) {
        const request = { private: false, ...(this.user.kind === "member" ? { agency_user: target.agency_user.id } : {}) };
        target = await this.openThread(request);
        if (this.selected?.key === target.key) await this.select(target);
      }
      const ack = await this.client.send(target.id, body);
      if (this.selected?.id === target.id) {
        this.append(ack.message);
        this.scrollToEnd();
      }
      this.status.textContent = "";
    } catch (error) {
      if (!this.input.value) this.input.value = body;
      this.status.textContent = `Not sent: ${error.message}`;
    }
  }

  async openThread(request) {
    const thread = await api(`/api/v1/candidates/${encodeURIComponent(this.candidateId)}/threads`, { method: "POST", body: request });
    await this.reload();
    return this.threads.find((t) => t.id === thread.id) ?? thread;
  }

  async messagePrivately() {
    if (this.user.kind === "member") {
      const agencyUser = this.selected?.agency_user ?? this.candidate.agency_users[0];
      if (!agencyUser) return;
      const thread = await this.openThread({ private: true, agency_user: agencyUser.id });
      await this.select(thread);
      return;
    }
    // An agency user chooses among the members it may write to privately.
    const show = this.contacts.hidden;
    this.contacts.replaceChildren(...this.candidate.private_contacts.map((member) => el("button", {
      type: "button",
      role: "menuitem",
      text: member.id === this.candidate.coordinator?.id ? `${member.name} (coordinator)` : member.name,
      onclick: async () => {
        this.contacts.hidden = true;
        const thread = await this.openThread({ private: true, member: member.id });
        await this.select(thread);
      },
    })));
    this.contacts.hidden = !show;
    if (show) this.contacts.querySelector('[role="menuitem"]')?.focus();
  }
}

// --- the top bar's newest unread line ------------------------------------------------

class AgencyUnreadLine extends HTMLElement {
  connectedCallback() {
    this.candidateId = this.getAttribute("candidate");
    this.client = client();
    this.refresh = () => this.load();
    for (const type of ["unread", "unread.summary", "connected"]) this.client.addEventListener(type, this.refresh);
    this.setAttribute("role", "status");
    this.load();
  }

  disconnectedCallback() {
    for (const type of ["unread", "unread.summary", "connected"]) this.client.removeEventListener(type, this.refresh);
  }

  async load() {
    const { candidates } = await api("/api/v1/unread").catch(() => ({ candidates: [] }));
    const entry = candidates.find((c) => c.candidate === this.candidateId);
    if (!entry) {
      this.replaceChildren();
      return;
    }
    const latest = entry.latest;
    this.replaceChildren(el("button", {
      type: "button",
      class: "am-new-line",
      onclick: () => document.dispatchEvent(new CustomEvent("agency-messages:open", { detail: { candidate: this.candidateId } })),
    }, el("span", { class: "blue-dot", "aria-hidden": "true" }),
    el("strong", { text: `New message from ${latest.author.name}: ` }),
    el("span", { class: "am-new-text", text: latest.body ?? "" })));
  }
}

// --- the candidate list with blue dots --------------------------------------------------

class AgencyCandidateList extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.list = el("ul", { class: "candidate-list" });
    this.replaceChildren(this.list);
    this.onUnread = (e) => this.setDot(e.detail.candidate, e.detail.candidate_unread);
    this.refresh = () => this.load();
    this.client.addEventListener("unread", this.onUnread);
    this.client.addEventListener("unread.summary", this.refresh);
    this.client.addEventListener("connected", this.refresh);
    this.load();
  }

  disconnectedCallback() {
    this.client.removeEventListener("unread", this.onUnread);
    this.client.removeEventListener("unread.summary", this.refresh);
    this.client.removeEventListener("connected", this.refresh);
  }

  async load() {
    const { candidates } = await api("/api/v1/candidates?limit=500");
    this.list.replaceChildren(...candidates.map((c) => el("li", { "data-candidate": c.id },
      el("a", { href: `/candidates/${encodeURIComponent(c.id)}`, text: c.name }),
      el("span", { class: "blue-dot", role: "img", "aria-label": `${c.unread} unread`, hidden: !c.unread }))));
  }

  setDot(candidateId, unread) {
    const dot = this.list.querySelector(`li[data-candidate="${CSS.escape(candidateId)}"] .blue-dot`);
    if (!dot) return;
    dot.hidden = !unread;
    dot.setAttribute("aria-label", `${unread} unread`);
  }
}

customElements.define("agency-messages", AgencyMessages);
customElements.define("agency-unread-line", AgencyUnreadLine);
customElements.define("agency-candidate-list", AgencyCandidateList);
