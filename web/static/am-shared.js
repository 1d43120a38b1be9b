// What the elements on one page share: the one socket client, the signed-in user, the
// candidates they follow, and small DOM helpers. Every piece of user text is set with
// textContent: never parsed as HTML.

import { api, client, newClientId } from "./am-client.js";

export { api, client, newClientId };

let mePromise = null;

// The signed-in user, asked for once per page.
export function me() {
  if (!mePromise) {
    mePromise = api("/api/v1/me");
    mePromise.catch(() => { mePromise = null; }); // a failed ask is asked again next time
  }
  return mePromise;
}

// Several elements may follow one candidate (the line and the dialog of a profile page):
// the socket subscribes with the first and unsubscribes after the last.
const followers = new Map(); // candidate -> {count, joined}

export function follow(candidate) {
  const entry = followers.get(candidate) ?? { count: 0, joined: null };
  if (entry.count === 0) entry.joined = client().subscribe(candidate);
  entry.count += 1;
  followers.set(candidate, entry);
  let following = true;
  return {
    joined: entry.joined, // settles once the server has answered the subscribe
    stop() {
      if (!following) return;
      following = false;
      entry.count -= 1;
      if (entry.count > 0) return;
      followers.delete(candidate);
      client().unsubscribe(candidate);
    },
  };
}

// Adds listeners for {type: handler}; returns the function that removes them all.
export function listen(target, handlers) {
  for (const [type, handler] of Object.entries(handlers)) target.addEventListener(type, handler);
  return () => {
    for (const [type, handler] of Object.entries(handlers)) target.removeEventListener(type, handler);
  };
}

// A user as people see it: an agency user with its agency ("Ann Agent · TalentCo").
export function displayName(user) {
  return user?.agency?.name ? `${user.name} · ${user.agency.name}` : (user?.name ?? "");
}

// The "new message" line (or the page, for a link) asks the candidate's <agency-messages>
// to open its dialog, at a thread when it names one: {thread, message} (ids, both optional).
const OPEN_REQUEST = "agency-messages:open";

export function requestOpen(candidate, at = {}) {
  document.dispatchEvent(new CustomEvent(OPEN_REQUEST, { detail: { candidate, ...at } }));
}

export function onOpenRequest(candidate, open) {
  return listen(document, { [OPEN_REQUEST]: (e) => e.detail.candidate === candidate && open(e.detail) });
}

// A part of a dialog tells the dialog what to say in its status line.
export function announce(part, text) {
  part.dispatchEvent(new CustomEvent("am-status", { bubbles: true, detail: text }));
}

export function el(tag, attributes = {}, ...children) {
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

// A decorative icon (hidden from assistive technology: its control is named in text), drawn
// from SVG path data in a 24×24 box.
export function icon(paths, { size = 18, className = "" } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const box = { viewBox: "0 0 24 24", width: String(size), height: String(size), "aria-hidden": "true", class: className };
  for (const [key, value] of Object.entries(box)) svg.setAttribute(key, value);
  for (const d of [paths].flat()) {
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

// The blue dot of unread messages: hidden from assistive technology, unless given an
// "aria-label", which makes it an image of that name.
export function blueDot(attributes = {}) {
  const named = "aria-label" in attributes;
  return el("span", { class: "blue-dot", "aria-hidden": !named && "true", role: named && "img", ...attributes });
}
