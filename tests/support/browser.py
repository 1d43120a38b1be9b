"""Helpers for the browser tests: Debian's Chromium through Playwright, a provisioned org,
and signed-in pages on a live server.

Playwright cannot download its own browser here, so it drives /usr/bin/chromium.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    WebSocketRoute,
    expect,
)

from harness.services import free_port
from server.app import create_app
from server.domain.auth import make_user_token
from tests.support.realtime import serve
from tests.support.world import SECRET, Api, make_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP: ViewportSize = {"width": 1100, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

ORG = "acme"
CANDIDATE = "c1"
CANDIDATE_NAME = "Jamie Rivera"
AGENCY_NAME = "Talent Bridge"
# user id -> (display name, kind)
USERS = {
    "coord": ("Cora Lind", "member"),
    "mem": ("Max Meyer", "member"),
    "third": ("Theo Brandt", "member"),
    "ann": ("Ann Archer", "agency"),
}


def name(user: str) -> str:
    return USERS[user][0]


def shown(user: str) -> str:
    """How the pages name `user`: an agency user with its agency."""
    display, kind = USERS[user]
    return f"{display} · {AGENCY_NAME}" if kind == "agency" else display


async def launch(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


async def provision(api: Api) -> None:
    """Org acme; agency `ag` with agency user ann; members coord, mem, third; candidate c1
    with coordinator coord, members [coord, mem, third] and agency user ann."""
    await api.org(ORG, "Acme")
    await api.provision(f"{ORG}/agencies/ag", {"name": AGENCY_NAME})
    for user, (display, kind) in USERS.items():
        await api.provision(
            f"{ORG}/users/{user}",
            {
                "name": display,
                "email": f"{user}@example.com",
                "kind": kind,
                "agency": "ag" if kind == "agency" else None,
            },
        )
    await set_candidate(api, coordinator="coord")


async def set_candidate(api: Api, *, coordinator: str) -> None:
    await api.provision(
        f"{ORG}/candidates/{CANDIDATE}",
        {
            "name": CANDIDATE_NAME,
            "coordinator": coordinator,
            "members": ["coord", "mem", "third"],
            "agency_users": ["ann"],
        },
    )


@dataclass
class Site:
    """A live server with provisioned users, and the browser contexts signed in to it."""

    base: str
    api: Api
    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)

    async def open(self, context: BrowserContext, path: str = f"/candidates/{CANDIDATE}") -> Page:
        page = await context.new_page()
        await page.goto(self.base + path)
        await ready(page)
        return page

    async def page(
        self,
        user: str,
        path: str = f"/candidates/{CANDIDATE}",
        viewport: ViewportSize | None = None,
    ) -> Page:
        """Signs `user` in with the login link that lands on `path`, as the host ATS does."""
        context = await self.browser.new_context(viewport=viewport or DESKTOP)
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = await context.new_page()
        token = make_user_token(SECRET, ORG, user)
        await page.goto(f"{self.base}/login#token={token}&next={quote(path, safe='/')}")
        await page.wait_for_url(self.base + path)
        await ready(page)
        return page

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()
        self.contexts.clear()

    # --- REST, as a user ----------------------------------------------------------------

    async def thread_of(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.api.open_thread(ORG, user, CANDIDATE, body)

    async def send(self, user: str, thread: int, body: str) -> dict[str, Any]:
        return await self.api.send(ORG, user, thread, body)

    async def threads(self, user: str) -> list[dict[str, Any]]:
        response = await self.api.get(ORG, user, f"/api/v1/candidates/{CANDIDATE}/threads")
        assert response.status_code == 200, response.text
        threads: list[dict[str, Any]] = response.json()["threads"]
        return threads

    async def unread(self, user: str, thread: int) -> int:
        """`user`'s unread count in `thread`, as the server has it."""
        (found,) = [t for t in await self.threads(user) if t["id"] == thread]
        count: int = found["unread"]
        return count

    async def read(self, user: str, thread: int, message: int) -> None:
        response = await self.api.post(
            ORG, user, f"/api/v1/threads/{thread}/read", {"message_id": message}
        )
        assert response.status_code == 200, response.text

    async def history(self, user: str, thread: int) -> list[dict[str, Any]]:
        response = await self.api.get(
            ORG, user, f"/api/v1/threads/{thread}/messages", params={"limit": 100}
        )
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages


@asynccontextmanager
async def served_site(
    browser: Browser, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[Site]:
    """The app served in-process on a copy of the SQLite template, with org acme provisioned."""
    path = tmp_path / "browser.db"
    shutil.copyfile(sqlite_template, path)
    port = free_port()
    settings = make_settings(
        f"sqlite+aiosqlite:///{path}", tmp_path, public_url=f"http://127.0.0.1:{port}"
    )
    app = create_app(settings, auto_migrate=False)
    async with serve(app, port) as base:
        api = api_for(base)
        site = Site(base, api, browser)
        try:
            await provision(api)
            yield site
        finally:
            await site.close()
            await api.client.aclose()


def api_for(base: str) -> Api:
    return Api(httpx.AsyncClient(base_url=base, timeout=20))


async def ready(page: Page) -> None:
    """Waits until the page's messaging client is connected and subscribed: a sync point
    for the tests (read through the client module, which the page itself imports)."""
    await page.evaluate(
        "import('/static/am-client.js').then((m) => { window.__amTestClient = m.client(); })"
    )
    await connected(page)


async def connected(page: Page, timeout: float = 10_000) -> None:
    await page.wait_for_function(
        "() => { const c = window.__amTestClient;"
        " return !!c && c.connected && [...c.subscriptions.values()].every((v) => v !== null); }",
        timeout=timeout,
    )


async def disconnected(page: Page, timeout: float = 10_000) -> None:
    await page.wait_for_function("() => !window.__amTestClient.connected", timeout=timeout)


# --- locators, by the contract's accessible names ---------------------------------------

BUBBLE_NAME = re.compile(r"^Messages(, \d+ unread)?$")


def bubble(page: Page) -> Locator:
    return page.get_by_role("button", name=BUBBLE_NAME)


def bubble_label(page: Page) -> Locator:
    """The bubble, found also where the page hides it (another tab of the profile): its
    accessible name is in its aria-label."""
    return page.locator("agency-messages .am-bubble")


def dialog(page: Page) -> Locator:
    return page.get_by_role("dialog")


def unread_line(page: Page) -> Locator:
    return page.locator("agency-unread-line")


def tab(page: Page, label: str) -> Locator:
    """A thread tab, whether or not its name announces unread messages, and whether or not
    it names the agency of the agency user in `label`."""
    return dialog(page).get_by_role(
        "tab", name=re.compile("^" + re.escape(label) + r"( · [^,]+)?(, \d+ unread)?$")
    )


def message_item(page: Page, text: str) -> Locator:
    """A message the server has: not one still on its way from this page (`outgoing`)."""
    return (
        dialog(page)
        .get_by_role("log")
        .get_by_role("listitem")
        .and_(page.locator(":not(.am-outgoing)"))
        .filter(has=page.get_by_text(text, exact=True))
    )


def outgoing(page: Page, text: str) -> Locator:
    """A message this page sent that the server has not acknowledged: sending, or failed."""
    return (
        dialog(page)
        .get_by_role("log")
        .locator(".am-outgoing")
        .filter(has=page.get_by_text(text, exact=True))
    )


async def open_messages(page: Page) -> Locator:
    await bubble(page).click()
    box = dialog(page)
    await expect(box).to_be_visible()
    return box


async def write(page: Page, text: str) -> None:
    """Types `text` into the dialog's compose box and presses Send."""
    box = dialog(page)
    await box.get_by_role("textbox", name="Message").fill(text)
    await box.get_by_role("button", name="Send", exact=True).click()


async def bodies(page: Page) -> list[str]:
    texts: Sequence[str] = (
        await dialog(page)
        .get_by_role("log")
        .locator(".am-message:not(.am-outgoing) .am-body")
        .all_inner_texts()
    )
    return list(texts)


def divider(page: Page) -> Locator:
    """The "New" divider above the first unread message."""
    return dialog(page).get_by_role("log").get_by_role("separator", name="New messages")


async def sync(page: Page) -> None:
    """A round trip on the page's socket: whatever the page sent before has been handled."""
    await page.evaluate("window.__amTestClient.request({ op: 'ping' })")


# --- a page in a background tab ----------------------------------------------------------

# Chromium under Playwright always reports a visible page: the page is made to report what
# the test says, with the event that a browser fires when the user switches tabs.
VISIBILITY_SCRIPT = """
(() => {
  let state = "visible";
  const define = (key, get) =>
    Object.defineProperty(Document.prototype, key, { configurable: true, get });
  define("visibilityState", () => state);
  define("hidden", () => state === "hidden");
  window.__amSetVisibility = (next) => {
    state = next;
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""


async def make_hideable(page: Page) -> None:
    """Reloads `page` so that `set_visibility` can send it to the background and back."""
    await page.context.add_init_script(VISIBILITY_SCRIPT)
    await page.reload()
    await ready(page)


async def set_visibility(page: Page, state: str) -> None:
    await page.evaluate("(state) => window.__amSetVisibility(state)", state)


def confirmation(page: Page) -> Locator:
    """The question asked before a message is deleted."""
    return page.get_by_role("alertdialog", name="Delete this message?")


async def ask_to_delete(page: Page, text: str) -> Locator:
    """Opens the menu of the message `text` and picks Delete: the question is then open.
    Returns the message's "Message actions" button."""
    actions = message_item(page, text).get_by_role("button", name="Message actions")
    await actions.click()
    await message_item(page, text).get_by_role("menuitem", name="Delete").click()
    await expect(confirmation(page)).to_be_visible()
    return actions


async def delete_message(page: Page, text: str) -> None:
    await ask_to_delete(page, text)
    await confirmation(page).get_by_role("button", name="Delete").click()
    await expect(confirmation(page)).to_be_hidden()


# --- a frame that has not arrived yet ---------------------------------------------------------


async def hold_back_frames(page: Page, frame_type: str) -> None:
    """Reloads `page` with its socket passing on every server frame but those of
    `frame_type`: the page acts as one that such a frame has not reached yet."""
    marker = f'"type": "{frame_type}"'
    compact = f'"type":"{frame_type}"'

    def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        ws.on_message(server.send)

        def to_page(message: str | bytes) -> None:
            text = message if isinstance(message, str) else message.decode(errors="replace")
            if marker not in text and compact not in text:
                ws.send(message)

        server.on_message(to_page)

    await page.route_web_socket(re.compile(r"/ws$"), relay)
    await page.reload()
    await ready(page)
