// <agency-messages candidate="c1" [thread="7" message="42"]>: the message bubble, with its
// blue dot, and the conversation panel it opens. With `thread` (a link's target:
// AM_LINK_TEMPLATE fills it in), the panel opens at once at that thread and message, if the
// user sees that thread. The panel is put together from parts that share one Conversation:
// <agency-thread-tabs>, <agency-private-menu>, <agency-message-list>, <agency-seen-by> and
// <agency-compose>. Parts say what the status line should read with an `am-status` event,
// and ask for the compose box's focus with `am-focus-compose`.
//
// The panel is a non-modal dialog docked beside the page at a fixed size (the whole screen
// on a phone): the page stays usable next to it, and it neither moves nor resizes as
// messages arrive or threads change. It lives at the end of the document, outside the host
// page's own layout, so that it shows even when the bubble is in a hidden part of the page
// (another tab of the profile, say). While one is open, the document's root has the class
// `am-docked` (the host's stylesheet makes room for the panel with it).

import "./am-compose.js";
import { Conversation } from "./am-conversation.js";
import "./am-message-list.js";
import "./am-private-menu.js";
import "./am-seen-by.js";
import { blueDot, client, el, icon, listen, onOpenRequest } from "./am-shared.js";
import "./am-thread-tabs.js";

const BUBBLE = "M4 4h16a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"; // a speech bubble

const LOST_ACCESS = "You no longer have access to this candidate's messages.";

class AgencyMessages extends HTMLElement {
  connectedCallback() {
    this.candidateId = this.getAttribute("candidate");
    this.conversation = new Conversation(this.candidateId);
    this.render();
    this.stopListening = [
      listen(this.conversation, { change: () => this.renderState(), lost: () => this.say(LOST_ACCESS) }),
      listen(client(), {
        disconnected: (e) => { this.banner.textContent = e.detail.code === 4001 ? "Signed out. Sign in again to send messages." : "Reconnecting…"; },
        connected: () => { this.banner.textContent = ""; },
      }),
      listen(this.dialog, {
        close: () => {
          docked();
          this.restoreFocus();
        },
        keydown: (e) => this.onKey(e),
        "am-status": (e) => this.say(e.detail),
        "am-focus-compose": () => this.compose.focusInput(),
      }),
      onOpenRequest(this.candidateId, (at) => this.openAt(at)),
      // Escape with the focus nowhere in particular (the page's body) closes the panel too.
      listen(document, {
        keydown: (e) => {
          if (e.key === "Escape" && !e.defaultPrevented && e.target === document.body && this.dialog.open) this.dialog.close();
        },
      }),
    ];
    this.conversation.start();
    const thread = positiveId(this.getAttribute("thread"));
    if (thread !== null) this.openAt({ thread, message: positiveId(this.getAttribute("message")), onlyThere: true });
  }

  disconnectedCallback() {
    for (const stop of this.stopListening) stop();
    this.conversation.stop();
    this.dialog.remove();
    docked();
  }

  render() {
    this.dot = blueDot({ hidden: true });
    this.bubble = el("button", {
      type: "button",
      class: "am-bubble",
      "aria-haspopup": "dialog",
      "aria-label": "Messages",
      onclick: () => this.open(),
    }, icon(BUBBLE, { className: "am-bubble-icon" }), el("span", { text: "Messages" }), this.dot);

    this.heading = el("h2", { id: `am-title-${this.candidateId}`, text: "Messages" });
    this.list = this.part("agency-message-list");
    this.compose = this.part("agency-compose");
    this.status = el("p", { class: "am-status", role: "status" });
    // While the socket is down (it reconnects by itself); empty, and so hidden, otherwise.
    this.banner = el("p", { class: "am-reconnecting", role: "status" });
    this.panel = el("section", { role: "tabpanel", class: "am-panel" },
      this.list, this.part("agency-seen-by"), this.status, this.compose);
    this.dialog = el("dialog", { class: "am-dialog", "aria-labelledby": this.heading.id },
      el("header", { class: "am-dialog-header" }, this.heading,
        el("button", { type: "button", class: "am-close", "aria-label": "Close", text: "×", onclick: () => this.dialog.close() })),
      el("div", { class: "am-toolbar" }, this.part("agency-thread-tabs"), this.part("agency-private-menu")),
      this.banner,
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
      // One panel at a time (a page may show several candidates' bubbles).
      for (const other of document.querySelectorAll("dialog.am-dialog[open]")) other.close();
      this.dialog.show();
      docked();
    }
    this.compose.focusInput();
    await this.list.show({ fresh: true });
    // Once loaded, into the compose box, unless the user has moved on inside the panel
    // meanwhile (to a tab, say): a load must not take the focus from them.
    if (!this.dialog.contains(document.activeElement)) this.compose.focusInput();
  }

  // Escape closes the innermost open thing: an open menu, else the panel. (A menu that has
  // the focus closes itself; the confirmation, a modal dialog, answers its own Escape.)
  onKey(event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    if (event.target.closest?.("dialog") !== this.dialog) return;
    event.preventDefault();
    const menus = [...this.dialog.querySelectorAll(".am-menu:not([hidden])")];
    if (menus.length) for (const menu of menus) menu.dispatchEvent(new CustomEvent("am-dismiss"));
    else this.dialog.close();
  }

  // On closing, the focus goes back to where it was before the panel opened; when that is
  // gone (the new-message line, removed once read) or hidden, to the bubble. Focus the user
  // has put elsewhere on the page meanwhile stays there.
  restoreFocus() {
    const from = this.openedFrom;
    this.openedFrom = null;
    const active = document.activeElement; // (still in the closed panel, or on the body)
    const lost = !active || active === document.body || this.dialog.contains(active);
    if (!lost || this.dialog.open) return;
    const usable = from && from !== document.body && from.isConnected && from.checkVisibility() && !this.dialog.contains(from);
    (usable ? from : this.bubble).focus();
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

// The document's root says whether a panel is open, for the page to make room for it.
function docked() {
  document.documentElement.classList.toggle("am-docked", Boolean(document.querySelector("dialog.am-dialog[open]")));
}

// A thread or message id from an attribute or a link; null for anything else.
export function positiveId(raw) {
  return /^[1-9][0-9]{0,15}$/.test(raw ?? "") ? Number(raw) : null;
}

customElements.define("agency-messages", AgencyMessages);
