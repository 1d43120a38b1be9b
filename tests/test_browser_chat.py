"""The conversation reads and behaves like a chat panel, in Chromium against a live server:
docked at a fixed size, a thread switcher that fits a phone, grouped messages with days,
relative times, avatars and safe links, honest sending states, and who will read a message.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Locator, Page, WebSocketRoute, expect

from tests.support.browser import (
    AGENCY_NAME,
    CANDIDATE,
    DESKTOP,
    ORG,
    PHONE,
    Site,
    bubble,
    dialog,
    message_item,
    name,
    open_messages,
    outgoing,
    ready,
    shown,
    tab,
    unread_line,
    write,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("browser")]

SHORT = 5_000  # ms: what "live" may take here, far above what it takes in practice


def textbox(page: Page) -> Locator:
    return dialog(page).get_by_role("textbox", name="Message")


def log(page: Page) -> Locator:
    return dialog(page).get_by_role("log")


async def box_of(locator: Locator) -> dict[str, float]:
    box = await locator.bounding_box()
    assert box is not None
    return {key: round(value, 1) for key, value in box.items()}


async def more_agency_users(site: Site, *users: tuple[str, str]) -> None:
    """Adds agency users of the same agency, all linked to the candidate with ann."""
    for user, display in users:
        await site.api.provision(
            f"{ORG}/users/{user}",
            {"name": display, "email": f"{user}@example.com", "kind": "agency", "agency": "ag"},
        )
    await site.api.provision(
        f"{ORG}/candidates/{CANDIDATE}",
        {
            "name": "Jamie Rivera",
            "coordinator": "coord",
            "members": ["coord", "mem", "third"],
            "agency_users": ["ann", *(user for user, _ in users)],
        },
    )


# --- 1. a docked, stable panel --------------------------------------------------------------


async def test_the_panel_is_docked_beside_the_profile_and_keeps_its_size(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "A first message")
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "A private one")
    cora = await site.page("coord")
    panel = await open_messages(cora)
    await expect(textbox(cora)).to_be_focused()  # the focus goes into the panel
    await expect(message_item(cora, "A first message")).to_be_visible()
    docked = await box_of(panel)
    top = await box_of(cora.locator(".topbar"))
    assert docked["x"] + docked["width"] == DESKTOP["width"], docked
    assert 360 <= docked["width"] <= 440, docked
    assert docked["y"] == top["height"], (docked, top)
    assert docked["y"] + docked["height"] == DESKTOP["height"], docked
    # Beside the profile, not over it; and the page stays usable next to it.
    profile = await box_of(cora.locator(".profile-card"))
    assert profile["x"] + profile["width"] <= docked["x"], (profile, docked)

    for i in range(1, 9):
        await site.send("ann", agency["id"], f"Arriving {i}, a longer line of text to take up room")
    await expect(
        message_item(cora, "Arriving 8, a longer line of text to take up room")
    ).to_be_visible(timeout=SHORT)
    assert await box_of(panel) == docked
    await tab(cora, f"Private: {name('ann')}").click()
    await expect(message_item(cora, "A private one")).to_be_visible()
    assert await box_of(panel) == docked

    await cora.get_by_role("tab", name="Activity").click()  # not modal: the page answers
    await expect(cora.get_by_role("tabpanel", name="Activity")).to_be_visible()
    await expect(panel).to_be_visible()
    await tab(cora, f"Private: {name('ann')}").focus()
    await cora.keyboard.press("Escape")
    await expect(panel).to_be_hidden()

    phone = await site.page("coord", viewport=PHONE)
    await open_messages(phone)
    await expect(message_item(phone, "A first message")).to_be_visible()
    full = {"x": 0, "y": 0, "width": PHONE["width"], "height": PHONE["height"]}
    assert await box_of(dialog(phone)) == full
    await phone.keyboard.press("Escape")
    await expect(dialog(phone)).to_be_hidden()
    await expect(bubble(phone)).to_be_focused()


async def test_the_profile_does_not_shift_when_the_new_message_line_comes_and_goes(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    for viewport in (DESKTOP, PHONE):
        cora = await site.page("coord", viewport=viewport)
        heading = cora.get_by_role("heading", name="Jamie Rivera")
        sections = cora.get_by_role("tablist", name="Candidate sections")
        before = (await box_of(heading), await box_of(sections))
        sent = await site.send("ann", agency["id"], f"Hello at {viewport['width']}px wide")
        await expect(unread_line(cora)).to_contain_text("Hello at", timeout=SHORT)
        assert (await box_of(heading), await box_of(sections)) == before
        await site.read("coord", agency["id"], sent["id"])
        await expect(unread_line(cora)).to_be_empty(timeout=SHORT)
        assert (await box_of(heading), await box_of(sections)) == before


# --- 2. a thread switcher that fits -------------------------------------------------------------


async def test_on_a_phone_the_threads_are_one_row_that_scrolls(site: Site) -> None:
    await more_agency_users(site, ("ben", "Ben Bauer"), ("cat", "Cat Castillo"))
    for user in ("ann", "ben", "cat"):
        private = await site.thread_of("coord", {"agency_user": user, "private": True})
        await site.send("coord", private["id"], f"Privately to {user}")
    cora = await site.page("coord", viewport=PHONE)
    await open_messages(cora)
    tabs = dialog(cora).get_by_role("tab")
    await expect(tabs).to_have_count(6)
    boxes = [await box_of(t) for t in await tabs.all()]
    assert len({box["y"] for box in boxes}) == 1, boxes  # one row
    tablist = dialog(cora).get_by_role("tablist", name="Conversations")
    assert (await box_of(tablist))["height"] < 2 * boxes[0]["height"]
    overflow = await tablist.evaluate("(list) => list.scrollWidth > list.clientWidth")
    assert overflow, "six threads do not fit a phone's width: the row scrolls"

    last = tab(cora, "Private: Cat Castillo")
    await last.click()
    await expect(last).to_have_attribute("aria-selected", "true")
    await expect(message_item(cora, "Privately to cat")).to_be_visible()
    await expect(last).to_be_in_viewport(ratio=1)


async def test_the_focused_tab_keeps_the_focus_when_messages_arrive(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "Private, from before")
    cora = await site.page("coord")
    await open_messages(cora)
    first = tab(cora, name("ann"))
    second = tab(cora, f"Private: {name('ann')}")
    await first.focus()
    await cora.keyboard.press("ArrowRight")
    await expect(second).to_be_focused()
    await expect(second).to_have_attribute("aria-selected", "true")
    await second.evaluate("(tab) => { tab.dataset.probe = 'kept'; }")

    # One in the other thread (its count changes), one in this thread.
    await site.send("ann", agency["id"], "In the agency thread")
    await expect(first).to_have_accessible_name(re.compile(", 1 unread$"), timeout=SHORT)
    await site.send("ann", private["id"], "In the private thread")
    await expect(message_item(cora, "In the private thread")).to_be_visible(timeout=SHORT)
    await expect(second).to_be_focused()
    assert await cora.evaluate("document.activeElement.dataset.probe") == "kept"
    await cora.keyboard.press("ArrowLeft")
    await expect(first).to_be_focused()
    await expect(message_item(cora, "In the agency thread")).to_be_visible()


async def test_escape_closes_the_innermost_open_thing(site: Site) -> None:
    agency = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    await site.send("coord", agency["id"], "Mine, with a menu")
    cora = await site.page("coord")
    await open_messages(cora)
    item = message_item(cora, "Mine, with a menu")
    actions = item.get_by_role("button", name="Message actions")
    menu = item.get_by_role("menu")

    await actions.click()
    await expect(item.get_by_role("menuitem", name="Delete")).to_be_focused()
    await cora.keyboard.press("Escape")
    await expect(menu).to_be_hidden()
    await expect(dialog(cora)).to_be_visible()
    await expect(actions).to_be_focused()

    # The menu open, the focus moved on to the compose box: Escape still closes the menu first.
    await actions.click()
    await expect(menu).to_be_visible()
    await textbox(cora).click()
    await cora.keyboard.press("Escape")
    await expect(menu).to_be_hidden()
    await expect(dialog(cora)).to_be_visible()
    await expect(textbox(cora)).to_be_focused()
    await cora.keyboard.press("Escape")
    await expect(dialog(cora)).to_be_hidden()
    await expect(bubble(cora)).to_be_focused()


# --- 3. messages read like chat ------------------------------------------------------------


async def test_messages_are_grouped_by_author_under_days_with_avatars_and_times(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    for body in ("One from Ann", "Two from Ann", "Three from Ann"):
        await site.send("ann", agency["id"], body)
    await site.send("coord", agency["id"], "One from Cora")
    await site.send("ann", agency["id"], "Ann again")
    max_ = await site.page("mem")
    await max_.clock.install()  # time runs as usual, until the test moves it on
    await max_.reload()
    await ready(max_)
    await open_messages(max_)
    await expect(message_item(max_, "Ann again")).to_be_visible()

    heads = {
        "One from Ann": True,
        "Two from Ann": False,
        "Three from Ann": False,
        "One from Cora": True,
        "Ann again": True,
    }
    for body, head in heads.items():
        avatar = message_item(max_, body).locator(".am-avatar")
        await expect(avatar).to_have_attribute("aria-hidden", "true")
        if head:
            await expect(message_item(max_, body)).not_to_have_class(re.compile("am-continued"))
            await expect(avatar).to_be_visible()
        else:
            await expect(message_item(max_, body)).to_have_class(re.compile("am-continued"))
            await expect(avatar).to_be_hidden()
        # Grouped or not, each message names its author (for screen readers, at least).
        await expect(message_item(max_, body)).to_contain_text(
            shown("ann") if "Ann" in body else name("coord")
        )
    ann_avatar = message_item(max_, "One from Ann").locator(".am-avatar")
    await expect(ann_avatar).to_have_text("AA")
    await expect(ann_avatar).to_have_class(re.compile("am-avatar-agency"))
    cora_avatar = message_item(max_, "One from Cora").locator(".am-avatar")
    await expect(cora_avatar).to_have_text("CL")
    await expect(cora_avatar).to_have_class(re.compile("am-avatar-hiring"))

    days = log(max_).get_by_role("separator").filter(has_not_text="New")
    await expect(days).to_have_count(1)
    await expect(log(max_).get_by_role("separator", name="Today")).to_be_visible()

    time = message_item(max_, "One from Ann").locator("time")
    await expect(time).to_have_text("just now")
    created = await time.get_attribute("datetime")
    assert created is not None and created.startswith("20")
    exact = await time.get_attribute("title")
    assert exact and re.search(r"\d{4}", exact) and re.search(r"\d{1,2}:\d{2}", exact), exact
    await expect(time).to_have_attribute("aria-label", exact)
    await time.focus()  # the exact time on focus too: the time takes the keyboard
    await expect(time).to_be_focused()

    await max_.clock.fast_forward("03:00")
    await expect(time).to_have_text("3 min ago", timeout=SHORT)
    await max_.clock.fast_forward("24:00:00")
    await expect(log(max_).get_by_role("separator", name="Yesterday")).to_be_visible(timeout=SHORT)
    await expect(time).to_have_text(re.compile(r"\d{1,2}:\d{2}"))


async def test_urls_become_safe_links_and_other_schemes_stay_text(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    body = (
        "CV: https://example.com/cv?id=7&lang=en. Not these: javascript:alert(document.domain)"
        " data:text/html,<b>x</b> ftp://example.com/file (or http://example.org/a_(b))"
    )
    await site.send("ann", agency["id"], body)
    await site.send("ann", agency["id"], "javascript:alert(1)")
    cora = await site.page("coord")
    await open_messages(cora)
    item = message_item(cora, body)
    await expect(item).to_be_visible()
    links = item.get_by_role("link")
    await expect(links).to_have_count(2)
    await expect(links.nth(0)).to_have_text("https://example.com/cv?id=7&lang=en")
    await expect(links.nth(0)).to_have_attribute("href", "https://example.com/cv?id=7&lang=en")
    await expect(links.nth(1)).to_have_text("http://example.org/a_(b)")
    for link in await links.all():
        await expect(link).to_have_attribute("rel", "noopener noreferrer")
        await expect(link).to_have_attribute("target", "_blank")
    await expect(item.locator(".am-body")).to_have_text(body)
    await expect(message_item(cora, "javascript:alert(1)").get_by_role("link")).to_have_count(0)
    await expect(log(cora).locator("a:not([href^='http'])")).to_have_count(0)

    # Right-to-left text: the body and the box take their direction from what is written.
    await write(cora, "مرحبا، هل هي متاحة؟")
    await expect(message_item(cora, "مرحبا، هل هي متاحة؟").locator(".am-body")).to_have_attribute(
        "dir", "auto"
    )
    await expect(textbox(cora)).to_have_attribute("dir", "auto")


# --- 4. honest sending states --------------------------------------------------------------------


Forward = Callable[[], None]


async def relay_sends(
    page: Page, on_send: Callable[[WebSocketRoute, dict[str, Any], Forward], None]
) -> None:
    """Reloads `page` with its socket passing every frame on, but the `send` ops: each goes
    to `on_send`, with the function that passes it on to the server."""

    def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        server.on_message(ws.send)

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("op") == "send":
                on_send(ws, frame, lambda: server.send(message))
            else:
                server.send(message)

        ws.on_message(to_server)

    await page.route_web_socket(re.compile(r"/ws$"), relay)
    await page.reload()
    await ready(page)


async def test_a_message_shows_as_sending_at_once_then_settles_once(site: Site) -> None:
    ann = await site.page("ann")
    held: list[Forward] = []
    arrived = asyncio.Event()

    def hold(ws: WebSocketRoute, frame: dict[str, Any], forward: Forward) -> None:
        held.append(forward)
        arrived.set()

    await relay_sends(ann, hold)
    await open_messages(ann)
    await write(ann, "On its way")
    pending = outgoing(ann, "On its way")
    await expect(pending).to_contain_text("Sending…")
    await expect(pending).to_have_attribute("aria-busy", "true")
    await expect(textbox(ann)).to_have_value("")
    await asyncio.wait_for(arrived.wait(), SHORT / 1000)
    assert len(held) == 1

    # Let it through: its ack and its live event both come, and it shows once.
    held[0]()
    await expect(message_item(ann, "On its way")).to_be_visible(timeout=SHORT)
    await expect(pending).to_have_count(0)
    await expect(log(ann).get_by_role("listitem").filter(has_text="On its way")).to_have_count(1)
    thread = await site.thread_of("ann", {"private": False})
    assert [m["body"] for m in await site.history("ann", thread["id"])] == ["On its way"]


async def test_a_refused_message_says_not_sent_and_retry_resends_it_once(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    cora = await site.page("coord")
    client_ids: list[str] = []

    def refuse_first(ws: WebSocketRoute, frame: dict[str, Any], forward: Forward) -> None:
        client_ids.append(frame["client_id"])
        if len(client_ids) > 1:
            forward()
            return
        refusal = {"type": "error", "ref": frame["ref"], "code": "unavailable", "message": "Busy."}
        ws.send(json.dumps(refusal))

    await relay_sends(cora, refuse_first)
    await open_messages(cora)
    await write(cora, "Worth retrying")
    failed = outgoing(cora, "Worth retrying")
    await expect(failed).to_contain_text("Not sent — Retry")
    await expect(dialog(cora).get_by_role("status").filter(has_text="Not sent")).to_contain_text(
        "Busy."
    )
    await expect(message_item(cora, "Worth retrying")).to_have_count(0)

    await failed.get_by_role("button", name="Retry").click()
    await expect(message_item(cora, "Worth retrying")).to_be_visible(timeout=SHORT)
    await expect(failed).to_have_count(0)
    assert len(client_ids) == 2 and client_ids[0] == client_ids[1], client_ids
    assert [m["body"] for m in await site.history("coord", agency["id"])] == ["Worth retrying"]


async def test_offline_the_panel_says_reconnecting_and_never_goes_blank(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "Loaded while online")
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "Loaded once back")
    cora = await site.page("coord")
    # The socket goes through a relay that drops it at once, and refuses it while "down"
    # (an offline browser's socket may take its time to notice).
    sockets: list[WebSocketRoute] = []
    down = False

    async def relay(ws: WebSocketRoute) -> None:
        if down:
            await ws.close(code=1012)
            return
        ws.connect_to_server()
        sockets.append(ws)

    await cora.route_web_socket(re.compile(r"/ws$"), relay)
    await cora.reload()
    await ready(cora)
    errors: list[str] = []
    cora.on("pageerror", lambda error: errors.append(str(error)))
    await open_messages(cora)
    await expect(message_item(cora, "Loaded while online")).to_be_visible()
    banner = dialog(cora).get_by_role("status").filter(has_text="Reconnecting…")
    await expect(banner).to_have_count(0)

    down = True
    await cora.context.set_offline(True)
    for socket in sockets:
        await socket.close(code=1012)
    await expect(banner).to_be_visible(timeout=SHORT)
    await tab(cora, f"Private: {name('ann')}").click()
    await expect(
        dialog(cora).get_by_text(re.compile("^Could not load the messages"))
    ).to_be_visible(timeout=SHORT)
    await expect(dialog(cora).get_by_text("Loading messages…")).to_be_hidden()
    await write(cora, "Written offline")
    await expect(outgoing(cora, "Written offline")).to_contain_text("Sending…")

    down = False
    await cora.context.set_offline(False)
    await expect(banner).to_have_count(0, timeout=30_000)  # (the reconnect backs off)
    await expect(message_item(cora, "Loaded once back")).to_be_visible(timeout=SHORT)
    await expect(message_item(cora, "Written offline")).to_have_count(1, timeout=SHORT)
    await expect(outgoing(cora, "Written offline")).to_have_count(0)
    assert errors == []


async def test_drafts_are_kept_per_thread_across_reloads(site: Site) -> None:
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "Private, from before")
    cora = await site.page("coord")
    await open_messages(cora)
    await textbox(cora).fill("For the agency, unfinished")
    await tab(cora, f"Private: {name('ann')}").click()
    await expect(textbox(cora)).to_have_value("")
    await textbox(cora).fill("Just for Ann, unfinished")

    await cora.reload()
    await ready(cora)
    await open_messages(cora)
    await expect(tab(cora, name("ann"))).to_have_attribute("aria-selected", "true")
    await expect(textbox(cora)).to_have_value("For the agency, unfinished")
    await tab(cora, f"Private: {name('ann')}").click()
    await expect(textbox(cora)).to_have_value("Just for Ann, unfinished")
    await cora.get_by_role("button", name="Send", exact=True).click()
    await expect(message_item(cora, "Just for Ann, unfinished")).to_be_visible(timeout=SHORT)

    await cora.reload()
    await ready(cora)
    await open_messages(cora)
    await tab(cora, f"Private: {name('ann')}").click()
    await expect(textbox(cora)).to_have_value("")  # sent: its draft is gone
    # Kept under the user's id: another user signing in to this browser has their own.
    keys = await cora.evaluate("Object.keys(localStorage)")
    assert keys and all(key.startswith("am-draft:coord:") for key in keys), keys


async def test_a_counter_shows_near_the_limit_and_an_oversized_message_is_not_cut(
    site: Site,
) -> None:
    cora = await site.page("coord")
    await open_messages(cora)
    counter = dialog(cora).locator(".am-counter")
    await textbox(cora).fill("x" * 4_499)
    await expect(counter).to_be_hidden()
    await textbox(cora).fill("x" * 4_600)
    await expect(counter).to_have_text("4,600 / 5,000")
    await expect(textbox(cora)).to_have_accessible_description(re.compile("4,600 / 5,000"))
    too_long = "y" * 5_001
    await textbox(cora).fill(too_long)
    await expect(counter).to_have_text("5,001 / 5,000 — too long to send")
    await cora.get_by_role("button", name="Send", exact=True).click()
    status = dialog(cora).get_by_role("status").filter(has_text="Not sent")
    await expect(status).to_contain_text("limit of 5,000")
    await expect(textbox(cora)).to_have_value(too_long)  # never a silent cut
    await expect(log(cora).get_by_role("listitem")).to_have_count(0)

    longest = "z" * 5_000
    await textbox(cora).fill(longest)
    await textbox(cora).press("Enter")
    await expect(message_item(cora, longest)).to_be_visible(timeout=SHORT)
    await expect(counter).to_be_hidden()


async def test_enter_does_not_send_while_an_input_method_is_composing(site: Site) -> None:
    cora = await site.page("coord")
    await open_messages(cora)
    await textbox(cora).fill("こんにち")
    for init in ({"isComposing": True}, {"keyCode": 229}):
        await textbox(cora).evaluate(
            "(box, init) => box.dispatchEvent(new KeyboardEvent('keydown',"
            " { key: 'Enter', bubbles: true, cancelable: true, ...init }))",
            init,
        )
        await expect(textbox(cora)).to_have_value("こんにち")
        await expect(log(cora).get_by_role("listitem")).to_have_count(0)
    await textbox(cora).fill("こんにちは")
    await textbox(cora).press("Enter")
    await expect(message_item(cora, "こんにちは")).to_be_visible(timeout=SHORT)


# --- 5. who will read it -------------------------------------------------------------------


async def test_the_compose_box_says_who_will_read_and_private_tabs_carry_a_lock(site: Site) -> None:
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "Between us")
    cora = await site.page("coord")
    ann = await site.page("ann")
    await open_messages(cora)
    await open_messages(ann)
    audience = {
        cora: (
            f"Visible to the hiring team and {name('ann')} · {AGENCY_NAME}",
            tab(cora, f"Private: {name('ann')}"),
            f"Private: only you and {name('ann')} · {AGENCY_NAME}",
            tab(cora, name("ann")),
        ),
        ann: (
            "Visible to the hiring team",
            tab(ann, f"Private: {name('coord')}"),
            f"Private: only you and {name('coord')}",
            tab(ann, "Hiring team"),
        ),
    }
    for page, (shared, private_tab, only, shared_tab) in audience.items():
        await expect(dialog(page).get_by_text(shared, exact=True)).to_be_visible()
        await expect(textbox(page)).to_have_accessible_description(shared)
        await expect(shared_tab.locator("svg")).to_have_count(0)
        lock = private_tab.locator("svg.am-lock")
        await expect(lock).to_have_attribute("aria-hidden", "true")
        await expect(private_tab).to_have_accessible_name(re.compile("^Private: "))
        await private_tab.click()
        await expect(dialog(page).get_by_text(only, exact=True)).to_be_visible()
        await expect(textbox(page)).to_have_accessible_description(only)
