// Signed out on a page (often opened from a link in an email): say how to sign in, and
// remember the page so that the login page can come back to it afterwards.
const RETURN_TO_KEY = "am:return-to";
const RETURN_TO_MAX_AGE_MS = 30 * 60 * 1000;

/** `path` as a path of this site (with its query and fragment), or null for anything that
 * would leave it: other origins, protocol-relative `//host`, backslash tricks, non-strings. */
export function sameSitePath(path) {
  if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//") || path.includes("\\")) {
    return null;
  }
  let url;
  try {
    url = new URL(path, location.origin);
  } catch {
    return null;
  }
  if (url.origin !== location.origin) return null;
  return url.pathname + url.search + url.hash;
}

/** Renders the signed-out notice into `main` and remembers where the user was. */
export function signedOut(main) {
  const notice = document.createElement("p");
  notice.setAttribute("role", "status");
  notice.textContent = "Please sign in with your login link to continue.";
  main.replaceChildren(notice);
  const here = location.pathname + location.search + location.hash;
  // The bare home page is where a login link lands anyway: it must not displace a deeper
  // place remembered a moment ago, nor the login link's own destination.
  if (here === "/" || here.startsWith("/login")) return;
  try {
    localStorage.setItem(RETURN_TO_KEY, JSON.stringify({ path: here, at: Date.now() }));
  } catch {
    // Storage refused (private mode, quota): the login link's own destination will do.
  }
}

/** The remembered place if it is recent and on this site, else null; forgets it either way,
 * so that a place is returned to once only. */
export function takeReturnTo() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(RETURN_TO_KEY) ?? "null");
    localStorage.removeItem(RETURN_TO_KEY);
  } catch {
    return null;
  }
  const age = Date.now() - Number(saved?.at);
  if (!(age >= 0 && age <= RETURN_TO_MAX_AGE_MS)) return null;
  return sameSitePath(saved?.path);
}
