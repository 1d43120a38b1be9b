async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.status === 401) {
    document.getElementById("candidates").textContent = "Please sign in with a login link.";
    throw new Error("signed out");
  }
  return response.json();
}

async function load() {
  const [me, list] = await Promise.all([getJson("/api/v1/me"), getJson("/api/v1/candidates")]);
  document.getElementById("me").textContent = me.name;
  const ul = document.getElementById("candidates");
  ul.replaceChildren();
  for (const c of list.candidates) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/candidates/${encodeURIComponent(c.id)}`;
    a.textContent = c.name;
    li.append(a);
    if (c.unread > 0) {
      const dot = document.createElement("span");
      dot.className = "blue-dot";
      dot.setAttribute("role", "img");
      dot.setAttribute("aria-label", `${c.unread} unread`);
      li.append(dot);
    }
    ul.append(li);
  }
}

load();
