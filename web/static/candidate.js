const candidateId = decodeURIComponent(location.pathname.split("/").pop());

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function load() {
  const candidate = await getJson(`/api/v1/candidates/${encodeURIComponent(candidateId)}`);
  document.getElementById("name").textContent = candidate.name;
  const { threads } = await getJson(`/api/v1/candidates/${encodeURIComponent(candidateId)}/threads`);
  const section = document.getElementById("threads");
  section.replaceChildren();
  for (const thread of threads) {
    const h2 = document.createElement("h2");
    h2.textContent = thread.kind === "private" ? `Private: ${thread.agency_user.name}` : thread.agency_user.name;
    const ol = document.createElement("ol");
    const page = await getJson(`/api/v1/threads/${thread.id}/messages`);
    for (const m of page.messages) {
      const li = document.createElement("li");
      li.textContent = m.deleted ? `${m.author.name}: (deleted)` : `${m.author.name}: ${m.body}`;
      ol.append(li);
    }
    section.append(h2, ol);
  }
}

load();
