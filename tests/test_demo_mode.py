"""Signing in from a link opened signed out, in a real browser (Debian's Chromium driven by
Playwright) against the demo pages: the login page returns to the page that asked for it."""

from __future__ import annotations

import json
import time

import pytest
from playwright.async_api import Page, expect

from server.domain.auth import make_user_token
from tests.support.browser import DESKTOP, ORG, Site
from tests.support.world import SECRET

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("browser")]

EMAIL_LINK = "/candidates/c1?thread=7&message=42#latest"
SIGNED_OUT = "Please sign in with your login link to continue."


async def signed_out_page(site: Site) -> Page:
    context = await site.browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    site.contexts.append(context)
    return await context.new_page()


async def sign_in(site: Site, page: Page, user: str, next_path: str) -> list[str]:
    """Opens `user`'s login link whose `next` is `next_path`; returns the paths (with query
    and fragment) of the pages the browser then loaded, once it has left /login."""
    loaded: list[str] = []
    page.on(
        "framenavigated",
        lambda frame: (
            loaded.append(frame.url.removeprefix(site.base)) if frame == page.main_frame else None
        ),
    )
    token = make_user_token(SECRET, ORG, user)
    await page.goto(f"{site.base}/login#token={token}&next={next_path}")
    await page.wait_for_url(lambda url: "/login" not in url, wait_until="commit")
    return [path for path in loaded if not path.startswith("/login")]


async def remember(page: Page, value: object) -> None:
    await page.evaluate("(value) => localStorage.setItem('am:return-to', value)", json.dumps(value))


async def test_signing_in_returns_to_the_page_that_asked_for_it(site: Site) -> None:
    page = await signed_out_page(site)
    await page.goto(site.base + EMAIL_LINK)
    await page.evaluate(
        "import('/static/am-signin.js').then((m) => m.signedOut(document.querySelector('main')))"
    )
    await expect(page.get_by_role("main")).to_have_text(SIGNED_OUT)

    # The login link itself goes elsewhere: the remembered place wins, query and fragment kept.
    loaded = await sign_in(site, page, "coord", "/")
    assert loaded[0] == EMAIL_LINK, loaded
    await expect(page.get_by_role("heading", name="Jamie Rivera")).to_be_visible()

    # Used once: the next sign-in follows its link again.
    loaded = await sign_in(site, page, "coord", "/")
    assert loaded[0] == "/", loaded


@pytest.mark.parametrize(
    ("path", "age_minutes"),
    [
        pytest.param(EMAIL_LINK, 31, id="stale"),
        pytest.param(EMAIL_LINK, -5, id="future"),
        pytest.param("//evil.example/candidates/c1", 1, id="other-host"),
        pytest.param("https://evil.example/", 1, id="other-origin"),
        pytest.param("/\\evil.example/", 1, id="backslash"),
        pytest.param("javascript:alert(1)", 1, id="script"),
    ],
)
async def test_a_stale_or_foreign_place_is_ignored(site: Site, path: str, age_minutes: int) -> None:
    page = await signed_out_page(site)
    await page.goto(site.base + "/static/favicon.svg")
    await remember(page, {"path": path, "at": int(time.time() * 1000) - age_minutes * 60_000})

    loaded = await sign_in(site, page, "coord", "/candidates/c1")
    assert loaded[0] == "/candidates/c1", loaded


async def test_a_login_link_never_leads_off_site(site: Site) -> None:
    page = await signed_out_page(site)
    loaded = await sign_in(site, page, "coord", "/\\evil.example/")
    assert loaded[0] == "/", loaded


async def test_an_email_link_opened_signed_out_comes_back_after_sign_in(site: Site) -> None:
    """The candidate page itself asks to sign in and remembers the link."""
    page = await signed_out_page(site)
    await page.goto(site.base + EMAIL_LINK)
    await expect(page.get_by_text(SIGNED_OUT)).to_be_visible()

    loaded = await sign_in(site, page, "ann", "/")
    assert loaded[0] == EMAIL_LINK, loaded
