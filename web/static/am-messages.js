// <agency-messages candidate="c1" [thread="7" message="42"]>: the message bubble, with its
// blue dot, and the dialog it opens. With `thread` (a link's target: AM_LINK_TEMPLATE fills
// it in), the dialog opens at once at that thread and message, if the user sees that thread. The dialog is put together from parts that share one Conversation:
// <agency-thread-tabs>, <agency-private-menu>, <agency-message-list> and <agency-compose>.
// Parts say what the status line should read with an `am-status` event, and ask for the
// compose box's focus with `am-focus-compose`.
//
// The dialog itself lives at the end of the document, outside the host page's own layout:
// a modal dialog inside a hidden part of the page (another tab of the profile, say) would
// open unseen, and leave the page inert behind it.

import "./am-compose.js";
import { Conversation } from "./am-conversation.js";
import "./am-message-list.js";
import "./am-private-menu.js";
import { blueDot, el, listen, onOpenRequest } from "./am-shared.js";
import "./am-thread-tabs.js";

const LOST_ACCESS = "You no longer have access to this candidate's messages.";

function bubbleIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [key, value] of Object.entries({ viewBox: "0 0 24 24", width: "18", height: "18", "aria-hidden": "true", class: "am-bubble-icon" })) {
    svg.setAttribute(key, value);
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z");
  svg.append(path);
  return svg;
}

class AgencyMessages extends HTMLElement {
  connectedCallback() {
    this.candidateId = this.getAttribute("candidate");
    this.conversation = new Conversation(this.candidateId);
    this.render();
    this.stopListening = [
      listen(this.conversation, { change: () => this.renderState(), lost: () => this.say(LOST_ACCESS) }),
      listen(this.dialog, {
        close: () => this.restoreFocus(),
        "am-status": (e) => this.say(e.detail),
        "am-focus-compose": () => this.compose.focusInput(),
      }),
      onOpenRequest(this.candidateId, (at) => this.openAt(at)),
    ];
    this.conversation.start();
    const thread = positiveId(this.getAttribute("thread"));
    if (thread !== null) this.openAt({ thread, message: positiveId(this.getAttribute("message")), onlyThere: true });
  }

  disconnectedCallback() {
    for (const stop of this.stopListening) stop();
    this.conversation.stop();
    this.dialog.remove();
  }

  render() {
    this.dot = blueDot({ hidden: true });
    this.bubble = el("button", {
      type: "button",
      class: "am-bubble",
      "aria-haspopup": "dialog",
      "aria-label": "Messages",
      onclick: () => this.open(),
    }, bubbleIcon(), el("span", { text: "Messages" }), this.dot);

    this.heading = el("h2", { id: `am-title-${this.candidateId}`, text: "Messages" });
    this.list = this.part("agency-message-list");
    this.compose = this.part("agency-compose");
    this.status = el("p", { class: "am-status", role: "status" });
    this.panel = el("section", { role: "tabpanel", class: "am-panel" }, this.list, this.status, this.compose);
    this.dialog = el("dialog", { class: "am-dialog", "aria-labelledby": this.heading.id },
      el("header", { class: "am-dialog-header" }, this.heading,
        el("button", { type: "button", class: "am-close", "aria-label": "Close", text: "×", onclick: () => this.dialog.close() })),
      el("div", { class: "am-toolbar" }, this.part("agency-thread-tabs"), this.part("agency-private-menu")),
      this.panel);
    this.replaceChildren(this.bubble);
    document.body.append(this.dialog);
  }

  // A part of the dialog: created with the conversation it renders, before it connects.
  part(tag) {
    return Object.assign(document.createElement(tag), { conversation: this.conversation });
  }

  renderState() {
    const { candidate, selected, totalUnread } = this.conversation;
    this.dot.hidden = totalUnread === 0;
    this.bubble.setAttribute("aria-label", totalUnread ? `Messages, ${totalUnread} unread` : "Messages");
    if (candidate) this.heading.textContent = `Messages about ${candidate.name}`;
    if (selected) this.panel.setAttribute("aria-label", selected.label);
  }

  say(text) {
    this.status.textContent = text;
  }

  async open() {
    if (!this.dialog.open) {
      this.openedFrom = document.activeElement;
      this.dialog.showModal();
    }
    await this.list.show({ fresh: true });
    this.compose.focusInput();
  }

  // The browser gives the focus back to where it was before the dialog opened; when that is
  // gone (the new-message line, removed once read) or hidden, the bubble takes it instead of
  // the page's body.
  restoreFocus() {
    const from = this.openedFrom;
    this.openedFrom = null;
    const gone = !from || from === document.body || !from.isConnected || !from.checkVisibility();
    const active = document.activeElement; // (still in the closed dialog, or on the body)
    const lost = !active || active === document.body || this.dialog.contains(active);
    if (gone && lost && !this.dialog.open) this.bubble.focus();
  }

  // Opens at a thread (by id) and a message in it, when the user sees that thread; else at
  // the thread selected already, or (`onlyThere`: a link) not at all.
  async openAt({ thread: threadId, message: messageId, onlyThere = false } = {}) {
    const thread = threadId ? await this.conversation.threadById(threadId) : null;
    if (!thread && onlyThere) return;
    if (thread) {
      this.conversation.selected = thread;
      this.conversation.emit("change");
      this.list.target = messageId ?? null;
    }
    await this.open();
  }
}

// A thread or message id from an attribute or a link; null for anything else.
export function positiveId(raw) {
  return /^[1-9][0-9]{0,15}$/.test(raw ?? "") ? Number(raw) : null;
}

customElements.define("agency-messages", AgencyMessages);
