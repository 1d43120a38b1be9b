// The demo host ATS's own page script: who is signed in, and the candidate profile's tabs.
import { api } from "./am-client.js";

async function main() {
  let user;
  try {
    user = await api("/api/v1/me");
  } catch {
    document.querySelector("main").replaceChildren(
      Object.assign(document.createElement("p"), { textContent: "Please sign in with a login link." }),
    );
    return;
  }
  document.getElementById("me").textContent = `${user.name} · ${user.kind === "agency" ? "Agency" : "Hiring team"}`;
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
  document.title = `${candidate.name} · Acme ATS`;
  document.getElementById("candidate-name").textContent = candidate.name;
  document.getElementById("coordinator").textContent = candidate.coordinator?.name ?? "–";
  document.getElementById("agency-users").textContent = candidate.agency_users.map((u) => u.name).join(", ") || "–";
  const line = document.createElement("agency-unread-line");
  line.setAttribute("candidate", candidateId);
  document.getElementById("unread-slot").append(line);
  const messages = document.createElement("agency-messages");
  messages.setAttribute("candidate", candidateId);
  document.getElementById("messages-slot").append(messages);

  const tabs = [...document.querySelectorAll('.profile-tabs [role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      for (const other of tabs) {
        const selected = other === tab;
        other.setAttribute("aria-selected", String(selected));
        other.tabIndex = selected ? 0 : -1;
        document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
      }
    });
  }
}

main();
