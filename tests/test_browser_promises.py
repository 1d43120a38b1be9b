"""The browser client keeps its promises exactly, in Chromium against a live server: links
land on the message, the new-message line opens the thread that holds it, read means seen,
no empty threads, a thread whose agency user was unlinked says so, agencies are named, and
a message is deleted only after a confirmation, leaving a tombstone.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

from tests.support.browser import (
    AGENCY_NAME,
    CANDIDATE,
    ORG,
    PHONE,
    Site,
    ask_to_delete,
    bubble,
    bubble_label,
    confirmation,
    delete_message,
    dialog,
    divider,
    hold_back_frames,
    make_hideable,
    message_item,
    name,
    open_messages,
    ready,
    set_visibility,
    shown,
    sync,
    tab,
    unread_line,
    write,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("browser")]

SHORT = 5_000  # ms: what "live" may take here, far above what it takes in practice


def link(thread: Any, message: Any, candidate: str = CANDIDATE) -> str:
    """The path of an email alert's link (AM_LINK_TEMPLATE's default)."""
    return f"/candidates/{candidate}?thread={thread}&message={message}"


async def set_people(site: Site, *, agency_users: list[str], coordinator: str = "coord") -> None:
    """The host ATS provisions the candidate again with these people."""
    await site.api.provision(
        f"{ORG}/candidates/{CANDIDATE}",
        {
            "name": "Jamie Rivera",
            "coordinator": coordinator,
            "members": ["coord", "mem", "third"],
            "agency_users": agency_users,
        },
    )


async def unlink_ann(site: Site) -> None:
    await set_people(site, agency_users=[])


async def link_ben_beside_ann(site: Site) -> None:
    await site.api.provision(
        f"{ORG}/users/ben",
        {"name": "Ben Bauer", "email": "ben@example.com", "kind": "agency", "agency": "ag"},
    )
    await set_people(site, agency_users=["ann", "ben"])


async def new_line(page: Page) -> None:
    """Activates the top bar's new-message line."""
    await page.get_by_role("button", name=re.compile("^New message")).click()


# --- links land on the message ------------------------------------------------------------


async def test_a_link_opens_its_thread_at_the_first_unread_message_under_a_new_divider(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("ann", agency["id"], "In the agency thread")
    read = [await site.send("coord", private["id"], f"Read {i:02d}") for i in range(1, 31)]
    await site.read("ann", private["id"], read[-1]["id"])
    unread = [await site.send("coord", private["id"], f"Unread {i:02d}") for i in range(1, 21)]

    ann = await site.page("ann", path=link(private["id"], unread[-1]["id"]))
    await expect(dialog(ann)).to_be_visible()
    await expect(tab(ann, f"Private: {name('coord')}")).to_have_attribute("aria-selected", "true")
    first_unread = message_item(ann, "Unread 01")
    await expect(first_unread).to_be_in_viewport()
    await expect(divider(ann)).to_be_in_viewport()
    await expect(divider(ann)).to_have_text("New")
    follows = await divider(ann).evaluate("(d) => d.nextElementSibling.textContent")
    assert "Unread 01" in follows
    await expect(message_item(ann, "Read 30")).to_be_visible()  # the read ones come before it
    above = await divider(ann).evaluate("(d) => d.previousElementSibling.textContent")
    assert "Read 30" in above
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)
    assert await site.unread("ann", private["id"]) == 0

    # Everything read now: a link to an older message lands on that message.
    ann_again = await site.open(ann.context, link(private["id"], read[4]["id"]))
    await expect(dialog(ann_again)).to_be_visible()
    await expect(message_item(ann_again, "Read 05")).to_be_in_viewport()
    await expect(divider(ann_again)).to_have_count(0)

    # A thread the user does not see, or a link that names none: the page as usual.
    for path in (link(999_999, 1), f"/candidates/{CANDIDATE}?thread=abc&message=x"):
        page = await site.open(ann.context, path)
        await expect(bubble(page)).to_be_visible()
        await expect(dialog(page)).to_be_hidden()
    third = await site.page("third", path=link(private["id"], unread[0]["id"]))
    await expect(bubble(third)).to_be_visible()
    await expect(dialog(third)).to_be_hidden()


async def test_the_dialog_pages_back_to_the_first_unread_message(site: Site) -> None:
    thread = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    for i in range(1, 71):
        await site.send("coord", thread["id"], f"Unread {i:02d}")
    ann = await site.page("ann")
    await expect(bubble(ann)).to_have_accessible_name("Messages, 70 unread")
    await open_messages(ann)
    await expect(message_item(ann, "Unread 01")).to_be_in_viewport()
    await expect(divider(ann)).to_be_in_viewport()
    await expect(dialog(ann).get_by_role("log").get_by_role("listitem")).to_have_count(70)
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)


# --- the new-message line ------------------------------------------------------------------


async def test_the_line_opens_the_thread_that_holds_the_message_even_from_the_activity_tab(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "The agency thread comes first")
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    ann = await site.page("ann")
    await ann.get_by_role("tab", name="Activity").click()
    await expect(ann.get_by_role("tabpanel", name="Activity")).to_be_visible()

    sent = await site.send("coord", private["id"], "Only for you")
    line = ann.get_by_role("button", name=re.compile("^New message"))
    await expect(line).to_have_accessible_name(
        re.compile(f"^New message from {name('coord')}: Only for you"), timeout=SHORT
    )
    await expect(bubble_label(ann)).to_have_attribute("aria-label", "Messages, 1 unread")
    assert await site.unread("ann", private["id"]) == 1

    await line.click()
    await expect(dialog(ann)).to_be_visible()
    await expect(tab(ann, f"Private: {name('coord')}")).to_have_attribute("aria-selected", "true")
    await expect(message_item(ann, "Only for you")).to_be_visible()
    await expect(message_item(ann, "The agency thread comes first")).to_have_count(0)
    await expect(bubble_label(ann)).to_have_attribute("aria-label", "Messages", timeout=SHORT)
    assert await site.unread("ann", private["id"]) == 0
    assert sent["thread"] == private["id"]

    # The page answers the keyboard: Escape closes the dialog, back on the Activity tab.
    await ann.keyboard.press("Escape")
    await expect(dialog(ann)).to_be_hidden()
    await expect(ann.get_by_role("tabpanel", name="Activity")).to_be_visible()
    await ann.get_by_role("tab", name="Profile").click()
    await expect(ann.get_by_role("tabpanel", name="Profile")).to_be_visible()


# --- read means seen ------------------------------------------------------------------------


async def test_a_message_that_arrives_in_a_background_tab_is_read_when_the_user_comes_back(
    site: Site,
) -> None:
    agency = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    await site.send("coord", agency["id"], "Before")
    ann = await site.page("ann")
    await make_hideable(ann)
    await open_messages(ann)
    await expect(message_item(ann, "Before")).to_be_visible()
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)

    await set_visibility(ann, "hidden")
    await site.send("coord", agency["id"], "While you were away")
    await expect(message_item(ann, "While you were away")).to_be_visible(timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)
    await sync(ann)  # a read sent on arrival would have been handled by now
    assert await site.unread("ann", agency["id"]) == 1

    await set_visibility(ann, "visible")
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)
    await expect(divider(ann)).to_be_visible()
    following = await divider(ann).evaluate("(d) => d.nextElementSibling.textContent")
    assert "While you were away" in following
    assert await site.unread("ann", agency["id"]) == 0


async def test_replying_in_a_thread_reads_everything_before_the_reply(site: Site) -> None:
    agency = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    ann = await site.page("ann")
    await make_hideable(ann)
    await open_messages(ann)
    await set_visibility(ann, "hidden")  # so that nothing is read by being shown
    await site.send("coord", agency["id"], "Can she start in May?")
    await expect(message_item(ann, "Can she start in May?")).to_be_visible(timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)

    await write(ann, "Yes, on the 2nd")
    await expect(message_item(ann, "Yes, on the 2nd")).to_be_visible(timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)
    assert await site.unread("ann", agency["id"]) == 0


# --- no empty threads -------------------------------------------------------------------------


async def test_message_privately_creates_the_thread_with_its_first_message_only(
    site: Site,
) -> None:
    coord = await site.page("coord")
    ann = await site.page("ann")
    await open_messages(coord)
    await dialog(coord).get_by_role("button", name="Message privately").click()
    draft = tab(coord, f"Private: {name('ann')}")
    await expect(draft).to_have_attribute("aria-selected", "true")
    await expect(dialog(coord).get_by_role("textbox", name="Message")).to_be_focused()
    await expect(dialog(coord)).to_contain_text("No messages yet")

    assert [t for t in await site.threads("ann") if t["kind"] == "private"] == []
    assert [t for t in await site.threads("coord") if t["kind"] == "private"] == []
    await open_messages(ann)
    await expect(tab(ann, "Hiring team")).to_be_visible()
    await expect(dialog(ann).get_by_role("tab", name=re.compile("^Private:"))).to_have_count(0)

    await write(coord, "Just between us")
    await expect(message_item(coord, "Just between us")).to_be_visible(timeout=SHORT)
    (private,) = [t for t in await site.threads("ann") if t["kind"] == "private"]
    assert private["member"]["id"] == "coord"
    await expect(tab(ann, f"Private: {name('coord')}")).to_be_visible(timeout=SHORT)


# --- an unlinked agency user --------------------------------------------------------------------


async def test_a_thread_whose_agency_user_was_unlinked_says_so_and_takes_no_message(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "In the agency thread")
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "Before the unlink")
    coord = await site.page("coord")
    # A send that overtakes the news of the unlink (which reaches this page only later).
    await hold_back_frames(coord, "candidate.updated")
    await open_messages(coord)
    await tab(coord, f"Private: {name('ann')}").click()
    await expect(message_item(coord, "Before the unlink")).to_be_visible()

    await unlink_ann(site)
    refused = await site.api.post(
        ORG, "coord", f"/api/v1/threads/{private['id']}/messages", {"body": "x"}
    )
    assert refused.status_code == 403
    reason = refused.json()["error"]["message"]
    await write(coord, "After the unlink")
    status = dialog(coord).get_by_role("status")
    await expect(status).to_contain_text(reason, timeout=SHORT)

    notice = dialog(coord).get_by_text(f"{name('ann')} no longer has access to this candidate")
    await expect(notice).to_be_visible(timeout=SHORT)
    await expect(dialog(coord).get_by_role("textbox", name="Message")).to_be_disabled()
    await expect(dialog(coord).get_by_role("button", name="Send", exact=True)).to_be_disabled()

    # The agency thread, after a reload too.
    await coord.reload()
    await open_messages(coord)
    await tab(coord, name("ann")).click()
    await expect(notice).to_be_visible()
    await expect(dialog(coord).get_by_role("textbox", name="Message")).to_be_disabled()
    assert [m["body"] for m in await site.history("coord", private["id"])] == ["Before the unlink"]


# --- agencies named -------------------------------------------------------------------------------


async def test_agency_users_are_shown_with_their_agency(site: Site) -> None:
    await link_ben_beside_ann(site)
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "From the agency")
    coord = await site.page("coord")
    await expect(unread_line(coord)).to_contain_text(f"New message from {shown('ann')}: ")
    await open_messages(coord)
    await expect(dialog(coord).get_by_role("tab", name=shown("ann"), exact=True)).to_be_visible()
    await expect(message_item(coord, "From the agency")).to_contain_text(shown("ann"))

    await dialog(coord).get_by_role("button", name="Message privately").click()
    choices = dialog(coord).get_by_role("menu", name="Message privately with")
    await expect(choices.get_by_role("menuitem")).to_have_text(
        [shown("ann"), f"Ben Bauer · {AGENCY_NAME}"]
    )
    await choices.get_by_role("menuitem", name=shown("ann")).click()
    await expect(
        dialog(coord).get_by_role("tab", name=f"Private: {shown('ann')}", exact=True)
    ).to_have_attribute("aria-selected", "true")


# --- delete, after a confirmation ----------------------------------------------------------------


async def test_deleting_asks_first_and_leaves_a_tombstone_for_everyone(site: Site) -> None:
    ann = await site.page("ann")
    coord = await site.page("coord")
    await open_messages(ann)
    await write(ann, "First, to delete")
    await write(ann, "Second, to delete too")
    await open_messages(coord)
    for text in ("First, to delete", "Second, to delete too"):
        await expect(message_item(coord, text)).to_be_visible(timeout=SHORT)

    # Escape, then Cancel: the message stays, and the focus is back on its menu button.
    actions = await ask_to_delete(ann, "First, to delete")
    question = confirmation(ann)
    await expect(question.get_by_role("button", name="Delete")).to_be_visible()
    await ann.keyboard.press("Escape")
    await expect(question).to_be_hidden()
    await expect(dialog(ann)).to_be_visible()
    await expect(actions).to_be_focused()
    await expect(message_item(ann, "First, to delete")).to_be_visible()
    await ask_to_delete(ann, "First, to delete")
    await question.get_by_role("button", name="Cancel").click()
    await expect(question).to_be_hidden()
    await expect(actions).to_be_focused()
    await expect(message_item(coord, "First, to delete")).to_be_visible()

    # Confirmed: a tombstone in its place, for both; the focus on the next message's menu.
    await delete_message(ann, "First, to delete")
    for page in (ann, coord):
        await expect(page.get_by_text("First, to delete", exact=True)).to_have_count(
            0, timeout=SHORT
        )
        items = dialog(page).get_by_role("log").get_by_role("listitem")
        await expect(items).to_have_count(2)
        await expect(items.first).to_contain_text("Message deleted")
    await expect(
        message_item(ann, "Second, to delete too").get_by_role("button", name="Message actions")
    ).to_be_focused()

    # The last one: the focus goes to the compose box.
    await delete_message(ann, "Second, to delete too")
    await expect(dialog(ann).get_by_role("textbox", name="Message")).to_be_focused()
    await expect(dialog(coord).get_by_text("Message deleted")).to_have_count(2, timeout=SHORT)

    # From history too, after a reload.
    await coord.reload()
    await open_messages(coord)
    await expect(dialog(coord).get_by_text("Message deleted")).to_have_count(2)


# --- the walk-through -----------------------------------------------------------------------------


async def test_walk_through_two_members_and_an_agency_user(site: Site) -> None:
    """Cora (coordinator) and Max (members) and Ann (agency) side by side, each in a browser
    of their own: agency and private threads, the line, an email link, the Activity tab and
    a background tab."""
    cora = await site.page("coord")
    max_ = await site.page("mem")
    ann = await site.page("ann")
    await make_hideable(ann)

    # Ann writes to the hiring team; both members see it, unread until they open it.
    await open_messages(ann)
    await expect(tab(ann, "Hiring team")).to_have_attribute("aria-selected", "true")
    await write(ann, "Jamie can start in May.")
    for member in (cora, max_):
        await expect(bubble(member)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)
        await expect(unread_line(member)).to_contain_text("Jamie can start in May.")
    await open_messages(cora)
    await expect(message_item(cora, "Jamie can start in May.")).to_be_visible()
    await expect(bubble(cora)).to_have_accessible_name("Messages", timeout=SHORT)
    await expect(bubble(max_)).to_have_accessible_name("Messages, 1 unread")

    # Cora goes private: nothing exists for Ann until the first message.
    await dialog(cora).get_by_role("button", name="Message privately").click()
    await expect(tab(cora, f"Private: {name('ann')}")).to_have_attribute("aria-selected", "true")
    await expect(dialog(ann).get_by_role("tab", name=re.compile("^Private:"))).to_have_count(0)
    await write(cora, "Between us: she is our first choice.")
    ann_private = tab(ann, f"Private: {name('coord')}")
    await expect(ann_private).to_be_visible(timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)
    await expect(dialog(max_).get_by_role("tab", name=re.compile("^Private:"))).to_have_count(0)

    # Ann closes the dialog, looks at the Activity tab, and opens the private message from
    # the line: visible, on the private thread, read then.
    await ann.keyboard.press("Escape")
    await ann.get_by_role("tab", name="Activity").click()
    await expect(unread_line(ann)).to_contain_text("Between us: she is our first choice.")
    await new_line(ann)
    await expect(dialog(ann)).to_be_visible()
    await expect(ann_private).to_have_attribute("aria-selected", "true")
    await expect(message_item(ann, "Between us: she is our first choice.")).to_be_visible()
    await expect(bubble_label(ann)).to_have_attribute("aria-label", "Messages", timeout=SHORT)

    # Ann's tab goes to the background; Cora answers there. Unread until Ann comes back.
    await set_visibility(ann, "hidden")
    await write(cora, "Can we call her tomorrow?")
    await expect(message_item(ann, "Can we call her tomorrow?")).to_be_visible(timeout=SHORT)
    await expect(bubble_label(ann)).to_have_attribute(
        "aria-label", "Messages, 1 unread", timeout=SHORT
    )
    await set_visibility(ann, "visible")
    await expect(bubble_label(ann)).to_have_attribute("aria-label", "Messages", timeout=SHORT)
    await write(ann, "Yes, after 10.")
    await expect(message_item(cora, "Yes, after 10.")).to_be_visible(timeout=SHORT)

    # Max follows the link of his email alert: the agency thread, at the unread message.
    (agency,) = [t for t in await site.threads("mem") if t["kind"] == "agency"]
    assert agency["unread"] == 1
    latest = agency["last_message"]
    max_link = await site.open(max_.context, link(agency["id"], latest["id"]))
    await expect(dialog(max_link)).to_be_visible()
    await expect(tab(max_link, name("ann"))).to_have_attribute("aria-selected", "true")
    await expect(divider(max_link)).to_be_visible()
    await expect(message_item(max_link, "Jamie can start in May.")).to_be_in_viewport()
    await expect(bubble(max_)).to_have_accessible_name("Messages", timeout=SHORT)

    # Ann takes a message back: asked first, then a tombstone for the hiring team.
    await tab(ann, "Hiring team").click()
    await delete_message(ann, "Jamie can start in May.")
    for page in (cora, max_link):
        await tab(page, name("ann")).click()
        await expect(dialog(page).get_by_text("Message deleted")).to_be_visible(timeout=SHORT)
        await expect(page.get_by_text("Jamie can start in May.", exact=True)).to_have_count(0)


# --- who sees the candidate changes, live -----------------------------------------------------


async def test_unlinking_the_agency_user_shows_live_without_any_action(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "Before the unlink")
    max_ = await site.page("mem")
    submitted_by = max_.locator("#agency-users")
    await expect(submitted_by).to_have_text(shown("ann"))
    await open_messages(max_)
    await expect(tab(max_, name("ann"))).to_have_attribute("aria-selected", "true")
    await expect(message_item(max_, "Before the unlink")).to_be_visible()
    private = dialog(max_).get_by_role("button", name="Message privately")
    await expect(private).to_be_visible()

    await unlink_ann(site)
    notice = dialog(max_).get_by_text(f"{name('ann')} no longer has access to this candidate")
    await expect(notice).to_be_visible(timeout=SHORT)
    await expect(dialog(max_).get_by_role("textbox", name="Message")).to_be_disabled()
    await expect(dialog(max_).get_by_role("button", name="Send", exact=True)).to_be_disabled()
    await expect(private).to_be_hidden()
    await expect(submitted_by).not_to_contain_text(name("ann"))
    await expect(message_item(max_, "Before the unlink")).to_be_visible()

    # A new coordinator shows as well.
    await set_people(site, agency_users=[], coordinator="third")
    await expect(max_.locator("#coordinator")).to_have_text(name("third"), timeout=SHORT)


async def test_a_tombstone_names_its_author_as_the_server_does_after_an_erasure(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("mem", agency["id"], "Written by Max")
    await site.send("ann", agency["id"], "Written by Ann")
    cora = await site.page("coord")
    await open_messages(cora)
    await expect(message_item(cora, "Written by Max")).to_contain_text(name("mem"))

    erased = await site.api.client.delete(f"/api/v1/orgs/{ORG}/users/mem", headers=site.api.service)
    assert erased.status_code in (200, 204), erased.text
    items = dialog(cora).get_by_role("log").get_by_role("listitem")
    stone = items.filter(has_text="Message deleted")
    await expect(stone).to_contain_text("Erased user", timeout=SHORT)
    await expect(dialog(cora).get_by_text(name("mem"))).to_have_count(0)
    await expect(message_item(cora, "Written by Ann")).to_be_visible()


# --- the keyboard -----------------------------------------------------------------------------


async def test_the_profile_tabs_answer_the_arrow_keys(site: Site) -> None:
    cora = await site.page("coord")
    profile = cora.get_by_role("tab", name="Profile")
    activity = cora.get_by_role("tab", name="Activity")
    for _ in range(10):  # Tab on from the top of the page, as a keyboard user does
        await cora.keyboard.press("Tab")
        if await profile.evaluate("(tab) => tab === document.activeElement"):
            break
    await expect(profile).to_be_focused()

    await cora.keyboard.press("ArrowRight")
    await expect(activity).to_be_focused()
    await expect(activity).to_have_attribute("aria-selected", "true")
    await expect(activity).to_have_attribute("tabindex", "0")
    await expect(profile).to_have_attribute("tabindex", "-1")
    await expect(cora.get_by_role("tabpanel", name="Activity")).to_be_visible()
    await expect(cora.get_by_role("tabpanel", name="Profile")).to_be_hidden()

    await cora.keyboard.press("Home")
    await expect(profile).to_be_focused()
    await expect(cora.get_by_role("tabpanel", name="Profile")).to_be_visible()
    await cora.keyboard.press("End")
    await expect(activity).to_be_focused()
    await cora.keyboard.press("ArrowLeft")
    await expect(profile).to_have_attribute("aria-selected", "true")
    await expect(cora.get_by_role("tabpanel", name="Activity")).to_be_hidden()


async def test_the_message_privately_menu_answers_the_keyboard(site: Site) -> None:
    await link_ben_beside_ann(site)
    cora = await site.page("coord")
    await open_messages(cora)
    button = dialog(cora).get_by_role("button", name="Message privately")
    await button.focus()
    await cora.keyboard.press("Enter")
    menu = dialog(cora).get_by_role("menu", name="Message privately with")
    ann_item = menu.get_by_role("menuitem", name=shown("ann"))
    ben_item = menu.get_by_role("menuitem", name=f"Ben Bauer · {AGENCY_NAME}")
    await expect(ann_item).to_be_focused()
    await cora.keyboard.press("ArrowDown")
    await expect(ben_item).to_be_focused()
    await cora.keyboard.press("ArrowDown")  # round to the first
    await expect(ann_item).to_be_focused()
    await cora.keyboard.press("ArrowUp")  # and back to the last
    await expect(ben_item).to_be_focused()
    await cora.keyboard.press("Home")
    await expect(ann_item).to_be_focused()
    await cora.keyboard.press("End")
    await expect(ben_item).to_be_focused()

    # Escape closes the menu alone, back on its button.
    await cora.keyboard.press("Escape")
    await expect(menu).to_be_hidden()
    await expect(dialog(cora)).to_be_visible()
    await expect(button).to_be_focused()
    await expect(button).to_have_attribute("aria-expanded", "false")

    await cora.keyboard.press("Enter")
    await expect(ann_item).to_be_focused()
    await cora.keyboard.press("ArrowDown")
    await cora.keyboard.press("Enter")
    await expect(tab(cora, "Private: Ben Bauer")).to_have_attribute("aria-selected", "true")
    await expect(dialog(cora).get_by_role("textbox", name="Message")).to_be_focused()


async def test_closing_a_dialog_opened_from_the_line_focuses_the_bubble(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "Read from the line")
    cora = await site.page("coord")
    line = cora.get_by_role("button", name=re.compile("^New message"))
    await line.focus()
    await cora.keyboard.press("Enter")
    await expect(message_item(cora, "Read from the line")).to_be_visible()
    await expect(unread_line(cora)).to_be_empty(timeout=SHORT)  # read: the line is gone

    await cora.keyboard.press("Escape")
    await expect(dialog(cora)).to_be_hidden()
    await expect(bubble(cora)).to_be_focused()


# --- a phone ----------------------------------------------------------------------------------


async def test_on_a_phone_the_line_shows_its_text_and_the_menu_button_is_big_enough(
    site: Site,
) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("coord", agency["id"], "Mine, with a menu")
    text = "Jamie can start on the first of May, and her notice period is four weeks."
    await site.send("ann", agency["id"], text)
    cora = await site.page("coord", viewport=PHONE)
    line = cora.get_by_role("button", name=re.compile("^New message"))
    await expect(line).to_have_accessible_name(f"New message from {shown('ann')}: {text}")
    shown_text = line.locator(".am-new-text")
    await expect(shown_text).to_be_visible()
    box = await shown_text.bounding_box()
    assert box is not None and box["width"] > 0 and box["height"] > 0, box
    viewport_width = PHONE["width"]
    line_box = await line.bounding_box()
    assert line_box is not None and line_box["x"] + line_box["width"] <= viewport_width, line_box

    await open_messages(cora)
    actions = message_item(cora, "Mine, with a menu").get_by_role("button", name="Message actions")
    await expect(actions).to_be_visible()
    size = await actions.bounding_box()
    assert size is not None and size["width"] >= 24 and size["height"] >= 24, size


# --- a slow network ---------------------------------------------------------------------------


async def test_a_slow_thread_shows_that_it_is_loading(site: Site) -> None:
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "Worth the wait")
    cora = await site.page("coord")
    released = asyncio.Event()

    async def held(route: Route) -> None:
        await released.wait()
        await route.continue_()

    await cora.route(re.compile(r"/api/v1/threads/\d+/messages"), held)
    await open_messages(cora)
    loading = dialog(cora).get_by_text("Loading messages…")
    log = dialog(cora).get_by_role("log")
    await expect(loading).to_be_visible()
    await expect(log).to_have_attribute("aria-busy", "true")
    released.set()
    await expect(message_item(cora, "Worth the wait")).to_be_visible()
    await expect(loading).to_be_hidden()
    await expect(log).not_to_have_attribute("aria-busy", "true")
    await cora.unroute(re.compile(r"/api/v1/threads/\d+/messages"))

    # Opened before the conversation itself has loaded: loading as well, not a blank box.
    released.clear()
    threads = re.compile(rf"/api/v1/candidates/{CANDIDATE}/threads$")
    await cora.route(threads, held)
    await cora.reload()
    await ready(cora)
    await open_messages(cora)
    await expect(loading).to_be_visible()
    released.set()
    await expect(message_item(cora, "Worth the wait")).to_be_visible()
    await expect(loading).to_be_hidden()
