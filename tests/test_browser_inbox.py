"""Across candidates, in Chromium against a live server: the top bar's inbox (a total that
moves live, a dropdown of the latest conversations that the keyboard alone works, links to
the conversation), the candidate list by latest activity with previews and counts, and
"Seen by" under a thread's last message, for members (named) and for the agency user.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Locator, Page, Request, expect

from tests.support.browser import (
    ARTIFACTS,
    CANDIDATE,
    CANDIDATE_NAME,
    ORG,
    PHONE,
    Site,
    dialog,
    message_item,
    name,
    open_messages,
    shown,
    tab,
    write,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("browser")]

SHORT = 5_000  # ms: what "live" may take here, far above what it takes in practice
SECOND = "c2"
SECOND_NAME = "Robin Park"
THIRD = "c3"
THIRD_NAME = "Sasha Okafor"
INBOX_NAME = re.compile(r"^Inbox(, \d+ unread)?$")


async def add_candidate(site: Site, candidate: str, display: str) -> None:
    """Another candidate with the people of c1: coord, mem and third, and ann linked."""
    await site.api.provision(
        f"{ORG}/candidates/{candidate}",
        {
            "name": display,
            "coordinator": "coord",
            "members": ["coord", "mem", "third"],
            "agency_users": ["ann"],
        },
    )


async def agency_thread(site: Site, candidate: str) -> dict[str, Any]:
    """The agency thread of ann on `candidate`, as coord opens it."""
    return await site.api.open_thread(
        ORG, "coord", candidate, {"agency_user": "ann", "private": False}
    )


def inbox(page: Page) -> Locator:
    return page.get_by_role("button", name=INBOX_NAME)


def conversations(page: Page) -> Locator:
    return page.get_by_role("list", name="Latest conversations").get_by_role("link")


def candidate_rows(page: Page) -> Locator:
    return page.locator("agency-candidate-list").get_by_role("listitem")


def seen_by(page: Page) -> Locator:
    return dialog(page).locator("agency-seen-by")


def requests_to(page: Page, path: str) -> list[str]:
    """Every request the page makes from now on to `path` (any query)."""
    made: list[str] = []

    def record(request: Request) -> None:
        if request.url.split("?")[0].endswith(path):
            made.append(request.url)

    page.on("request", record)
    return made


# --- the inbox ---------------------------------------------------------------------------


async def test_the_inbox_counts_live_and_lists_the_latest_conversations_for_the_keyboard(
    site: Site,
) -> None:
    await add_candidate(site, SECOND, SECOND_NAME)
    first = await agency_thread(site, CANDIDATE)
    second = await agency_thread(site, SECOND)
    await site.send("coord", first["id"], "Older, on the first candidate")
    await site.send("coord", second["id"], "Can she start   in May?\nOr June?")

    ann = await site.page("ann", path="/")
    button = inbox(ann)
    await expect(button).to_have_accessible_name("Inbox, 2 unread")
    await expect(button).to_have_attribute("aria-expanded", "false")
    await expect(button.locator(".am-inbox-badge")).to_have_text("2")

    # A message on a candidate: the total moves with the unread frame, nothing fetched.
    unread_fetches = requests_to(ann, "/api/v1/unread")
    await site.send("coord", first["id"], "Newest, on the first candidate")
    await expect(button).to_have_accessible_name("Inbox, 3 unread", timeout=SHORT)
    assert unread_fetches == []

    # The keyboard alone: the button opens the list, arrows move, Escape closes it.
    await button.focus()
    await ann.keyboard.press("Enter")
    await expect(button).to_have_attribute("aria-expanded", "true")
    panel = ann.locator("#" + (await button.get_attribute("aria-controls") or "missing"))
    await expect(panel).to_be_visible()
    items = conversations(ann)
    await expect(items).to_have_count(2)
    newest, older = items.nth(0), items.nth(1)
    await expect(newest).to_contain_text(CANDIDATE_NAME)
    await expect(newest).to_contain_text("Hiring team")
    await expect(newest).to_contain_text(f"{name('coord')}: Newest, on the first candidate")
    await expect(newest).to_have_accessible_name(re.compile(r", 2 unread$"))
    await expect(newest.locator(".am-inbox-count")).to_have_text("2")
    await expect(newest.locator("time")).to_have_attribute("title", re.compile(r"\d"))
    await expect(older).to_contain_text(SECOND_NAME)
    await expect(older).to_contain_text(f"{name('coord')}: Can she start in May? Or June?")
    await expect(older).to_have_accessible_name(re.compile(r", 1 unread$"))
    await ann.screenshot(path=str(ARTIFACTS / "inbox.png"))

    await ann.keyboard.press("ArrowDown")
    await expect(newest).to_be_focused()
    await ann.keyboard.press("ArrowDown")
    await expect(older).to_be_focused()
    await ann.keyboard.press("Escape")
    await expect(panel).to_be_hidden()
    await expect(button).to_have_attribute("aria-expanded", "false")
    await expect(button).to_be_focused()

    # Open, the list follows what arrives: the second candidate comes first, with its count.
    await ann.keyboard.press("Space")
    await expect(items).to_have_count(2)
    await site.send("coord", second["id"], "Any news?")
    await expect(button).to_have_accessible_name("Inbox, 4 unread", timeout=SHORT)
    await expect(items.nth(0)).to_contain_text(SECOND_NAME, timeout=SHORT)
    await expect(items.nth(0)).to_contain_text(f"{name('coord')}: Any news?")
    await expect(items.nth(0).locator(".am-inbox-count")).to_have_text("2")

    # Tabbing out of it closes it.
    await ann.keyboard.press("Tab")  # into the list
    await expect(items.nth(0)).to_be_focused()
    await ann.keyboard.press("Shift+Tab")
    await ann.keyboard.press("Shift+Tab")  # out, to the brand link
    await expect(panel).to_be_hidden()

    # An item opens the candidate's page at that thread.
    await button.click()
    await items.nth(0).focus()
    await ann.keyboard.press("Enter")
    latest = (await site.history("ann", second["id"]))[-1]
    await ann.wait_for_url(
        f"{site.base}/candidates/{SECOND}?thread={second['id']}&message={latest['id']}"
    )
    await expect(dialog(ann)).to_be_visible()
    await expect(tab(ann, "Hiring team")).to_have_attribute("aria-selected", "true")
    await expect(message_item(ann, "Any news?")).to_be_visible()


async def test_the_inbox_names_the_other_side_and_follows_the_hosts_link_template(
    site: Site,
) -> None:
    thread = await agency_thread(site, CANDIDATE)
    sent = await site.send("ann", thread["id"], "References are attached")
    deleted = await site.send("ann", thread["id"], "Sent too early")
    response = await site.api.delete(ORG, "ann", f"/api/v1/messages/{deleted['id']}")
    assert response.status_code == 204, response.text
    coord = await site.page("coord", path="/")
    await expect(inbox(coord)).to_have_accessible_name("Inbox, 1 unread")
    await coord.evaluate(
        "document.querySelector('agency-inbox')"
        ".setAttribute('href-template', '/ats/people/{candidate}#messages-{thread}-{message}')"
    )
    await inbox(coord).click()
    item = conversations(coord).first
    await expect(item).to_contain_text(shown("ann"))
    await expect(item).to_contain_text("Message deleted")
    await expect(item).not_to_contain_text("Sent too early")
    await expect(item).to_have_attribute(
        "href", f"/ats/people/{CANDIDATE}#messages-{thread['id']}-{deleted['id']}"
    )
    assert sent["id"] < deleted["id"]


async def test_the_inbox_on_a_candidates_page_counts_messages_on_another_candidate(
    site: Site,
) -> None:
    await add_candidate(site, SECOND, SECOND_NAME)
    second = await agency_thread(site, SECOND)
    ann = await site.page("ann", viewport=PHONE)  # the first candidate's page, on a phone
    await expect(inbox(ann)).to_have_accessible_name("Inbox")
    await site.send("coord", second["id"], "About the other candidate")
    await expect(inbox(ann)).to_have_accessible_name("Inbox, 1 unread", timeout=SHORT)
    await inbox(ann).click()
    item = conversations(ann).first
    await expect(item).to_contain_text(SECOND_NAME)
    await expect(item).to_be_in_viewport(ratio=1)  # the dropdown fits the phone's screen
    await ann.screenshot(path=str(ARTIFACTS / "inbox-phone.png"))


# --- the candidate list ------------------------------------------------------------------


async def test_the_candidate_list_puts_the_latest_activity_first_with_previews_and_counts(
    site: Site,
) -> None:
    await add_candidate(site, SECOND, SECOND_NAME)
    await add_candidate(site, THIRD, THIRD_NAME)
    first = await agency_thread(site, CANDIDATE)
    second = await agency_thread(site, SECOND)
    await site.send("coord", first["id"], "First, older")
    await site.send("coord", second["id"], "Second, one")
    await site.send("coord", second["id"], "Second, newest")

    ann = await site.page("ann", path="/")
    rows = candidate_rows(ann)
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0).get_by_role("link")).to_have_text(SECOND_NAME)
    await expect(rows.nth(0)).to_contain_text(f"{name('coord')}: Second, newest")
    await expect(rows.nth(0).get_by_role("img")).to_have_accessible_name("2 unread")
    await expect(rows.nth(0).locator(".am-count")).to_have_text("2")
    await expect(rows.nth(1).get_by_role("link")).to_have_text(CANDIDATE_NAME)
    await expect(rows.nth(1)).to_contain_text(f"{name('coord')}: First, older")
    await expect(rows.nth(1).locator(".am-count")).to_have_text("1")
    await expect(rows.nth(2).get_by_role("link")).to_have_text(THIRD_NAME)
    await expect(rows.nth(2)).to_contain_text("No messages yet")
    await expect(rows.nth(2).get_by_role("img")).to_have_count(0)
    await expect(rows.nth(2).locator(".am-count")).to_be_hidden()

    # Live: a message on the first candidate moves it to the top, with its count; the
    # keyboard's place in the list stays on the same candidate.
    await rows.nth(0).get_by_role("link").focus()
    await site.send("coord", first["id"], "First, now newest")
    await expect(rows.nth(0).get_by_role("link")).to_have_text(CANDIDATE_NAME, timeout=SHORT)
    await expect(rows.nth(0)).to_contain_text(f"{name('coord')}: First, now newest")
    await expect(rows.nth(0).get_by_role("img")).to_have_accessible_name("2 unread")
    await expect(rows.nth(0).locator(".am-count")).to_have_text("2")
    await expect(rows.nth(1).get_by_role("link")).to_have_text(SECOND_NAME)
    await expect(rows.nth(1).get_by_role("link")).to_be_focused()

    # Ann answers on the second candidate: it is on top again, her own words as "You".
    await site.send("ann", second["id"], "Here they are")
    await ann.reload()
    await expect(rows.nth(0).get_by_role("link")).to_have_text(SECOND_NAME)
    await expect(rows.nth(0)).to_contain_text("You: Here they are")


# --- seen by -----------------------------------------------------------------------------


async def test_a_member_sees_who_read_up_to_the_last_message_live(site: Site) -> None:
    thread = await agency_thread(site, CANDIDATE)
    coord = await site.page("coord")
    await open_messages(coord)
    await write(coord, "Can you send the references?")
    await expect(message_item(coord, "Can you send the references?")).to_be_visible()
    line = seen_by(coord)
    await expect(line).to_be_hidden()
    await expect(line).to_have_attribute("aria-live", "polite")
    (sent,) = await site.history("coord", thread["id"])

    await site.read("ann", thread["id"], sent["id"])
    await expect(line).to_have_text(f"Seen by {shown('ann')}", timeout=SHORT)
    await expect(line).to_be_visible()
    reader = line.locator(".am-seen-reader")
    await expect(reader).to_have_attribute("title", re.compile(r"^Seen .*\d"))
    await reader.focus()  # the time shows on focus as on hover
    await coord.screenshot(path=str(ARTIFACTS / "seen-by.png"))

    await site.read("mem", thread["id"], sent["id"])
    await expect(line).to_have_text(
        re.compile(
            f"^Seen by ({re.escape(shown('ann'))} and {name('mem')}|"
            f"{name('mem')} and {re.escape(shown('ann'))})$"
        ),
        timeout=SHORT,
    )

    # A newer message is read by nobody yet; the agency user reading it names her alone.
    await write(coord, "And the notice period?")
    await expect(line).to_be_hidden(timeout=SHORT)
    newer = (await site.history("coord", thread["id"]))[-1]
    await site.read("ann", thread["id"], newer["id"])
    await expect(line).to_have_text(f"Seen by {shown('ann')}", timeout=SHORT)

    # As the server has it, after a reload.
    await coord.reload()
    await open_messages(coord)
    await expect(seen_by(coord)).to_have_text(f"Seen by {shown('ann')}")


async def test_the_agency_user_sees_seen_for_the_hiring_team_live(site: Site) -> None:
    thread = await site.thread_of("ann", {"private": False})
    ann = await site.page("ann")
    await open_messages(ann)
    await write(ann, "She can start in May")
    await expect(message_item(ann, "She can start in May")).to_be_visible()
    line = seen_by(ann)
    await expect(line).to_be_hidden()
    (sent,) = await site.history("ann", thread["id"])

    await site.read("mem", thread["id"], sent["id"])
    await expect(line).to_have_text("Seen", timeout=SHORT)
    await expect(line).to_be_visible()
    await expect(line).not_to_contain_text(name("mem"))
    await expect(line.locator(".am-seen-reader")).to_have_attribute(
        "title", re.compile(r"^Seen by the hiring team .*\d")
    )

    await ann.reload()
    await open_messages(ann)
    await expect(seen_by(ann)).to_have_text("Seen")
