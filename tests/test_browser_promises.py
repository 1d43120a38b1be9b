"""The browser client keeps its promises exactly, in Chromium against a live server: links
land on the message, the new-message line opens the thread that holds it, read means seen,
no empty threads, a thread whose agency user was unlinked says so, agencies are named, and
a message is deleted only after a confirmation, leaving a tombstone.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.support.browser import (
    AGENCY_NAME,
    CANDIDATE,
    ORG,
    Site,
    ask_to_delete,
    bubble,
    bubble_label,
    confirmation,
    delete_message,
    dialog,
    divider,
    make_hideable,
    message_item,
    name,
    open_messages,
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


async def unlink_ann(site: Site) -> None:
    await site.api.provision(
        f"{ORG}/candidates/{CANDIDATE}",
        {
            "name": "Jamie Rivera",
            "coordinator": "coord",
            "members": ["coord", "mem", "third"],
            "agency_users": [],
        },
    )


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
    await site.api.provision(
        f"{ORG}/users/ben",
        {"name": "Ben Bauer", "email": "ben@example.com", "kind": "agency", "agency": "ag"},
    )
    await site.api.provision(
        f"{ORG}/candidates/{CANDIDATE}",
        {
            "name": "Jamie Rivera",
            "coordinator": "coord",
            "members": ["coord", "mem", "third"],
            "agency_users": ["ann", "ben"],
        },
    )
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
