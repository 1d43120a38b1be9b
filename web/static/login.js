// The login link carries the token in the URL fragment, which browsers never send to a
// server: no token ends up in an access log. It is traded for an HttpOnly cookie here.
import { sameSitePath, takeReturnTo } from "./am-signin.js";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token");
const next = params.get("next") || "/";
const status = document.getElementById("status");
history.replaceState(null, "", "/login");

async function signIn() {
  if (!token) {
    status.textContent = "This login link has no token.";
    return;
  }
  const response = await fetch("/api/v1/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
    credentials: "same-origin",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    status.textContent = `Sign-in failed: ${body?.error?.message ?? response.status}`;
    return;
  }
  // Back to the page that asked the user to sign in (an email link opened signed out), else
  // where the link says. Only same-site paths: a login link must never redirect elsewhere.
  location.replace(takeReturnTo() ?? sameSitePath(next) ?? "/");
}

signIn();
