// The demo host ATS's own page script: who is signed in, the candidate profile's tabs, and
// links that open the conversation at a message (?thread=…&message=…, as in email alerts).
import { api, client } from "./am-client.js";
import { displayName } from "./am-shared.js";

async function main() {
  let user;
  try {
    user = await api("/api/v1/me");
  } catch {
    const main = document.querySelector("main");
    const fallback = () => main.replaceChildren(
      Object.assign(document.createElement("p"), { textContent: "Please sign in with a login link." }),
    );
    await import("./am-signin.js").then((m) => m.signedOut(main)).catch(fallback);
    return;
  }
  const side = user.kind === "agency" ? (user.agency?.name ?? "Agency") : "Hiring team";
  document.getElementById("me").textContent = `${user.name} · ${side}`;
  const profile = document.getElementById("profile");
  if (profile) await candidatePage();
}

async function candidatePage() {
  const candidateId = decodeURIComponent(location.pathname.split("/").pop());
  const candidate = await api(`/api/v1/candidates/${encodeURIComponent(candidateId)}`).catch(() => null);
  if (!candidate) {
    document.getElementById("candidate-name").textContent = "Candidate not found";
    return;
  }
  showFacts(candidate);
  // Who sees the candidate changed (a coordinator, a linked agency user), or the socket
  // reconnected after what may have been a while: the facts are read again.
  let fetches = 0; // only the latest answer is shown
  const refetch = async () => {
    const asked = ++fetches;
    const fresh = await api(`/api/v1/candidates/${encodeURIComponent(candidateId)}`).catch(() => null);
    if (fresh && asked === fetches) showFacts(fresh);
  };
  client().addEventListener("candidate.updated", (e) => e.detail.candidate === candidateId && refetch());
  client().addEventListener("connected", refetch);
  const line = document.createElement("agency-unread-line");
  line.setAttribute("candidate", candidateId);
  document.getElementById("unread-slot").append(line);
  const messages = document.createElement("agency-messages");
  messages.setAttribute("candidate", candidateId);
  // A link names a thread and a message in it (as in email alerts): the conversation opens
  // there, if the user sees that thread (anything else opens the page as usual).
  const link = new URLSearchParams(location.search);
  for (const name of ["thread", "message"]) if (link.has(name)) messages.setAttribute(name, link.get(name));
  document.getElementById("messages-slot").append(messages);

  profileTabs();
}

function showFacts(candidate) {
  document.title = `${candidate.name} · Acme ATS`;
  document.getElementById("candidate-name").textContent = candidate.name;
  document.getElementById("coordinator").textContent = candidate.coordinator?.name ?? "–";
  document.getElementById("agency-users").textContent = candidate.agency_users.map(displayName).join(", ") || "–";
}

// The profile's tabs, as in the WAI-ARIA tabs pattern: a click or the arrow keys, Home and
// End select a tab (selection follows focus); only the selected tab is in the Tab order.
const TAB_MOVES = {
  ArrowRight: (index, count) => (index + 1) % count,
  ArrowLeft: (index, count) => (index - 1 + count) % count,
  Home: () => 0,
  End: (index, count) => count - 1,
};

function profileTabs() {
  const tabs = [...document.querySelectorAll('.profile-tabs [role="tab"]')];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const move = TAB_MOVES[event.key];
      if (!move) return;
      event.preventDefault();
      const next = tabs[move(tabs.indexOf(tab), tabs.length)];
      select(next);
      next.focus();
    });
  }
}

main();
