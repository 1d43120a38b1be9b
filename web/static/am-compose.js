// <agency-compose>: the box to write a message in. Enter sends, Shift+Enter starts a new
// line. Offline, a message waits for the connection; a message that cannot be sent comes
// back into the box. In a thread whose agency user was unlinked from the candidate, a
// notice says so and the box is disabled. Part of <agency-messages>, which hands it its
// `conversation`.

import { announce, client, el, listen } from "./am-shared.js";

class AgencyCompose extends HTMLElement {
  connectedCallback() {
    this.client = client();
    this.input = el("textarea", {
      id: `am-input-${this.conversation.candidateId}`,
      rows: "2",
      maxlength: "5000",
      required: true,
      onkeydown: (e) => this.onKey(e),
    });
    this.send = el("button", { type: "submit", text: "Send" });
    this.form = el("form", { class: "am-compose", onsubmit: (e) => { e.preventDefault(); this.sendCurrent(); } },
      el("label", { for: this.input.id, text: "Message" }),
      this.input,
      this.send);
    this.notice = el("p", { id: `am-notice-${this.conversation.candidateId}`, class: "am-notice", hidden: true });
    this.replaceChildren(this.notice, this.form);
    this.stopListening = listen(this.conversation, { change: () => this.render() });
  }

  render() {
    const { lost, selected } = this.conversation;
    this.form.hidden = lost;
    const closed = !lost && selected?.linked === false;
    this.notice.hidden = !closed;
    this.notice.textContent = closed ? `${selected.agency_user.name} no longer has access to this candidate` : "";
    this.input.disabled = closed;
    if (closed) this.input.setAttribute("aria-describedby", this.notice.id);
    else this.input.removeAttribute("aria-describedby");
    this.send.disabled = closed;
  }

  disconnectedCallback() {
    this.stopListening();
  }

  focusInput() {
    this.input.focus();
  }

  onKey(event) {
    if (event.key !== "Enter" || event.shiftKey) return;
    event.preventDefault();
    this.sendCurrent();
  }

  sendCurrent() {
    const body = this.input.value.trim();
    const thread = this.conversation.selected;
    if (!body || !thread || thread.linked === false) return;
    this.input.value = "";
    // One at a time, in the order typed: a second message must not overtake the first
    // (say, while the first one creates the conversation).
    this.sending = (this.sending ?? Promise.resolve()).then(() => this.deliver(thread, body));
  }

  async deliver(thread, body) {
    announce(this, this.client.connected ? "" : "Offline: the message will be sent when the connection is back.");
    try {
      await this.conversation.send(thread, body);
      announce(this, "");
    } catch (error) {
      if (!this.input.value) this.input.value = body;
      announce(this, `Not sent: ${error.message}`);
    }
  }
}

customElements.define("agency-compose", AgencyCompose);
