// <agency-compose>: the box to write a message in. Enter sends, Shift+Enter starts a new
// line (and Enter that ends an input method's composition sends nothing). Above the box, who
// will read the message; near the limit, a character counter (a message over it is never
// cut: it is not sent, and says why). What is written and not sent yet is kept per thread,
// across reloads. A message sent shows at once in the list, as sending, and stays there as
// "Not sent" if it fails (see am-message-list.js). In a thread whose agency user was
// unlinked from the candidate, a notice says so and the box is disabled. Part of
// <agency-messages>, which hands it its `conversation`.

import { announce, client, displayName, el, listen } from "./am-shared.js";

export const MAX_CHARS = 5000; // the server's limit, in characters (code points)
const COUNT_FROM = 4500;
const count = new Intl.NumberFormat("en-US");

class AgencyCompose extends HTMLElement {
  connectedCallback() {
    this.client = client();
    const id = this.conversation.candidateId;
    this.input = el("textarea", {
      id: `am-input-${id}`,
      rows: "2",
      dir: "auto",
      placeholder: "Write a message…",
      onkeydown: (e) => this.onKey(e),
      oninput: () => this.onInput(),
    });
    this.send = el("button", { type: "submit", class: "am-send", text: "Send" });
    this.audience = el("p", { id: `am-audience-${id}`, class: "am-audience" });
    this.counter = el("p", { id: `am-counter-${id}`, class: "am-counter", hidden: true });
    this.form = el("form", { class: "am-compose", onsubmit: (e) => { e.preventDefault(); this.sendCurrent(); } },
      el("label", { for: this.input.id, class: "am-visually-hidden", text: "Message" }),
      this.audience,
      el("div", { class: "am-compose-box" }, this.input, this.send),
      this.counter);
    this.notice = el("p", { id: `am-notice-${id}`, class: "am-notice", hidden: true });
    this.replaceChildren(this.notice, this.form);
    this.draftKey = null; // the thread whose draft is in the box
    this.stopListening = listen(this.conversation, { change: () => this.render() });
    this.render();
  }

  render() {
    const { lost, selected } = this.conversation;
    this.form.hidden = lost;
    const closed = !lost && selected?.linked === false;
    this.notice.hidden = !closed;
    this.notice.textContent = closed ? `${selected.agency_user.name} no longer has access to this candidate` : "";
    this.input.disabled = closed;
    this.send.disabled = closed;
    this.audience.textContent = selected && !closed ? audienceOf(this.conversation.user, selected) : "";
    this.switchDraft();
    this.describe();
  }

  disconnectedCallback() {
    this.stopListening();
  }

  focusInput() {
    this.input.focus();
  }

  describe() {
    const ids = [this.notice, this.audience, this.counter]
      .filter((node) => !node.hidden && node.textContent)
      .map((node) => node.id);
    if (ids.length) this.input.setAttribute("aria-describedby", ids.join(" "));
    else this.input.removeAttribute("aria-describedby");
  }

  // --- drafts, per user and thread ---------------------------------------------------------

  storageKey(threadKey) {
    const user = this.conversation.user?.id;
    return user && threadKey ? `am-draft:${user}:${this.conversation.candidateId}:${threadKey}` : null;
  }

  // The selected thread changed: its own draft comes into the box.
  switchDraft() {
    const key = this.storageKey(this.conversation.selected?.key);
    if (key === this.draftKey) return;
    // Written before the conversation loaded: kept, as the first thread's draft.
    const typedEarly = this.draftKey === null && this.input.value;
    this.draftKey = key;
    if (typedEarly && key) writeDraft(key, this.input.value);
    else this.input.value = key ? readDraft(key) : "";
    this.updateCounter();
  }

  onInput() {
    if (this.draftKey) writeDraft(this.draftKey, this.input.value);
    this.updateCounter();
  }

  updateCounter() {
    const length = [...this.input.value].length;
    const over = length > MAX_CHARS;
    this.counter.hidden = length < COUNT_FROM;
    this.counter.textContent = this.counter.hidden ? ""
      : `${count.format(length)} / ${count.format(MAX_CHARS)}${over ? " — too long to send" : ""}`;
    this.counter.classList.toggle("am-over", over);
    if (over) this.input.setAttribute("aria-invalid", "true");
    else this.input.removeAttribute("aria-invalid");
    this.describe();
  }

  // --- sending -----------------------------------------------------------------------------

  onKey(event) {
    if (event.key !== "Enter" || event.shiftKey) return;
    // Enter that picks a word of an input method (Japanese, Chinese...) is not a send.
    if (event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    this.sendCurrent();
  }

  sendCurrent() {
    const body = this.input.value.trim();
    const thread = this.conversation.selected;
    if (!body || !thread || thread.linked === false) return;
    const length = [...body].length;
    if (length > MAX_CHARS) {
      announce(this, `Not sent: the message is ${count.format(length)} characters long, over the limit of ${count.format(MAX_CHARS)}. Shorten it to send it.`);
      this.focusInput();
      return;
    }
    this.input.value = "";
    if (this.draftKey) writeDraft(this.draftKey, "");
    this.updateCounter();
    this.deliver(thread, body);
  }

  async deliver(thread, body) {
    announce(this, this.client.connected ? "" : "Offline: the message will be sent when the connection is back.");
    try {
      await this.conversation.send(thread, body);
      announce(this, "");
    } catch (error) {
      announce(this, `Not sent: ${error.message}`);
    }
  }
}

// Who reads what is written in `thread`.
export function audienceOf(user, thread) {
  if (thread.kind === "private") {
    const other = user?.kind === "agency" ? thread.member : thread.agency_user;
    return `Private: only you and ${displayName(other)}`;
  }
  if (user?.kind === "agency") return "Visible to the hiring team";
  return `Visible to the hiring team and ${displayName(thread.agency_user)}`;
}

// Storage may be unavailable (a private window, a full quota): drafts then last the page.
function readDraft(key) {
  try {
    return localStorage.getItem(key) ?? "";
  } catch {
    return "";
  }
}

function writeDraft(key, text) {
  try {
    if (text) localStorage.setItem(key, text);
    else localStorage.removeItem(key);
  } catch {
    // kept in the box only
  }
}

customElements.define("agency-compose", AgencyCompose);
