"""The browser client in a real browser (Debian's Chromium driven by Playwright), against a
live server: what a member and an agency user see and do on the candidate page.

Most tests serve the app in-process on a SQLite file; the restart test runs a real
`agency-messaging serve` process and kills it. Controls are found by the accessible names
that the contract promises to the host ATS's own browser tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    Locator,
    Page,
    Request,
    Route,
    WebSocket,
    expect,
)

from channels.protocol import SUBPROTOCOL_V2
from harness.services import ServerProcess, free_port
from tests.support.browser import (
    ARTIFACTS,
    BUBBLE_NAME,
    CANDIDATE,
    CANDIDATE_NAME,
    ORG,
    PHONE,
    Site,
    api_for,
    bodies,
    bubble,
    confirmation,
    connected,
    dialog,
    disconnected,
    message_item,
    name,
    open_messages,
    outgoing,
    provision,
    ready,
    set_candidate,
    tab,
    unread_line,
    write,
)
from tests.support.world import SECRET, SERVICE_TOKEN

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("browser")]

SHORT = 5_000  # ms: what "live" may take here, far above what it takes in practice
RECONNECT = 30_000  # ms: reconnection backs off exponentially while the server is down


# --- 1. live delivery and unread state ---------------------------------------------------


async def test_message_reaches_the_agency_user_live_and_reading_clears_unread_everywhere(
    site: Site,
) -> None:
    coord = await site.page("coord")
    ann = await site.page("ann")
    ann_second_tab = await site.open(ann.context)
    for page in (coord, ann, ann_second_tab):
        await expect(bubble(page)).to_have_accessible_name("Messages")
        await expect(page.get_by_role("heading", name=CANDIDATE_NAME)).to_be_visible()

    await open_messages(coord)
    await expect(tab(coord, name("ann"))).to_have_attribute("aria-selected", "true")
    await write(coord, "Hello from the hiring team")
    await expect(message_item(coord, "Hello from the hiring team")).to_be_visible()

    # Before ann opens the dialog: the bubble and the top bar announce the message.
    for page in (ann, ann_second_tab):
        await expect(bubble(page)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)
        await expect(unread_line(page)).to_contain_text(
            f"New message from {name('coord')}", timeout=SHORT
        )
        await expect(unread_line(page)).to_contain_text("Hello from the hiring team")

    await open_messages(ann)
    await expect(tab(ann, "Hiring team")).to_have_attribute("aria-selected", "true")
    await expect(message_item(ann, "Hello from the hiring team")).to_be_visible()
    await expect(message_item(ann, "Hello from the hiring team")).to_contain_text(name("coord"))

    # Reading in one tab clears the unread state in both of ann's tabs.
    for page in (ann, ann_second_tab):
        await expect(bubble(page)).to_have_accessible_name("Messages", timeout=SHORT)
        await expect(unread_line(page)).to_be_empty(timeout=SHORT)
        await expect(page.get_by_text("New message from")).to_have_count(0)

    # With the dialog open, the next message shows up in it and stays read.
    await write(coord, "Any news from the candidate?")
    await expect(message_item(ann, "Any news from the candidate?")).to_be_visible(timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)
    await expect(bubble(ann_second_tab)).to_have_accessible_name("Messages", timeout=SHORT)
    # The author never had anything unread.
    await expect(bubble(coord)).to_have_accessible_name("Messages")


def is_unread_summary(request: Request) -> bool:
    return urlsplit(request.url).path == "/api/v1/unread"


async def test_the_unread_line_moves_with_socket_frames_without_asking_the_server_again(
    site: Site,
) -> None:
    """The top bar's line loads GET /api/v1/unread once; after that, messages arriving in
    two threads and reading them one after the other move it from the frames alone."""
    agency = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    await site.send("coord", agency["id"], "Sent before the page opened")
    ann = await site.page("ann")
    await expect(unread_line(ann)).to_contain_text("Sent before the page opened")
    summary_requests: list[str] = []
    ann.on("request", lambda r: summary_requests.append(r.url) if is_unread_summary(r) else None)

    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "A private word")
    await expect(unread_line(ann)).to_contain_text(
        f"New message from {name('coord')}: A private word", timeout=SHORT
    )
    await site.send("mem", agency["id"], "The newest one, in the agency thread")
    await expect(unread_line(ann)).to_contain_text(
        f"New message from {name('mem')}: The newest one, in the agency thread", timeout=SHORT
    )
    await expect(bubble(ann)).to_have_accessible_name("Messages, 3 unread", timeout=SHORT)

    # The dialog opens on the agency thread and reads it: the private message is then the
    # newest unread one. Reading that too clears the line.
    await open_messages(ann)
    await expect(message_item(ann, "The newest one, in the agency thread")).to_be_visible()
    await expect(unread_line(ann)).to_contain_text(
        f"New message from {name('coord')}: A private word", timeout=SHORT
    )
    await tab(ann, f"Private: {name('coord')}").click()
    await expect(unread_line(ann)).to_be_empty(timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)

    # With the dialog closed the line comes back live, and opening the dialog from the line
    # (on the private thread, still selected) clears it again.
    await ann.keyboard.press("Escape")
    await site.send("coord", private["id"], "One more thing")
    await expect(unread_line(ann)).to_contain_text("One more thing", timeout=SHORT)
    await unread_line(ann).get_by_role("button").click()
    await expect(message_item(ann, "One more thing")).to_be_visible()
    await expect(unread_line(ann)).to_be_empty(timeout=SHORT)

    assert summary_requests == [], "the line asked the server again on a frame"
    # The same listener does see the line's own load: a reload asks once.
    async with ann.expect_request(is_unread_summary):
        await ann.reload()
    await ready(ann)
    await expect(unread_line(ann)).to_be_empty()


# --- 2. delete through the dot menu ------------------------------------------------------


async def test_the_author_deletes_a_message_from_its_menu_and_it_is_a_tombstone_everywhere(
    site: Site,
) -> None:
    coord = await site.page("coord")
    ann = await site.page("ann")
    mem = await site.page("mem")  # its dialog stays closed: the message only counts as unread
    await open_messages(coord)
    await open_messages(ann)

    await write(ann, "Sent to the wrong candidate, sorry")
    await expect(message_item(ann, "Sent to the wrong candidate, sorry")).to_be_visible()
    await write(ann, "This one stays")
    for page in (ann, coord):
        await expect(message_item(page, "Sent to the wrong candidate, sorry")).to_be_visible(
            timeout=SHORT
        )
        await expect(message_item(page, "This one stays")).to_be_visible(timeout=SHORT)
    await expect(bubble(mem)).to_have_accessible_name("Messages, 2 unread", timeout=SHORT)
    # Only the author gets the menu.
    await expect(
        message_item(coord, "This one stays").get_by_role("button", name="Message actions")
    ).to_have_count(0)

    item = message_item(ann, "Sent to the wrong candidate, sorry")
    actions = item.get_by_role("button", name="Message actions")
    await actions.click()
    await expect(actions).to_have_attribute("aria-expanded", "true")
    await item.get_by_role("menuitem", name="Delete").click()
    await confirmation(ann).get_by_role("button", name="Delete").click()

    for page in (ann, coord):
        await expect(page.get_by_text("Sent to the wrong candidate, sorry")).to_have_count(
            0, timeout=SHORT
        )
        await expect(dialog(page).get_by_text("Message deleted")).to_have_count(1)
        await expect(message_item(page, "This one stays")).to_be_visible()
    # A deleted message is no longer unread for anyone.
    await expect(bubble(mem)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)
    await expect(unread_line(mem)).to_contain_text("This one stays")
    await open_messages(mem)
    await expect(message_item(mem, "This one stays")).to_be_visible()
    await expect(mem.get_by_text("Sent to the wrong candidate, sorry")).to_have_count(0)

    # Stored as a tombstone, text gone.
    thread = await site.thread_of("ann", {"private": False})
    history = await site.history("ann", thread["id"])
    assert [(m["deleted"], m["body"]) for m in history] == [
        (True, None),
        (False, "This one stays"),
    ]


async def test_messages_sent_in_quick_succession_keep_their_order(site: Site) -> None:
    """Two messages sent one after the other, the first one on a slow network, in a thread
    that the first Send creates: they are stored and shown in the order they were sent."""
    ann = await site.page("ann")
    await open_messages(ann)  # the agency thread does not exist yet
    slowed: list[str] = []

    async def slow_first_thread_creation(route: Route) -> None:
        if route.request.method == "POST" and not slowed:
            slowed.append(route.request.url)
            await asyncio.sleep(1.0)
        await route.continue_()

    await ann.route("**/api/v1/candidates/*/threads", slow_first_thread_creation)
    await write(ann, "First point")
    await write(ann, "Second point")
    await expect(message_item(ann, "First point")).to_be_visible(timeout=SHORT)
    await expect(message_item(ann, "Second point")).to_be_visible(timeout=SHORT)
    assert slowed
    thread = await site.thread_of("ann", {"private": False})
    stored = [m["body"] for m in await site.history("ann", thread["id"])]
    assert stored == ["First point", "Second point"]
    assert await bodies(ann) == ["First point", "Second point"]


# --- 3. private threads ------------------------------------------------------------------


async def test_private_thread_is_seen_by_its_two_people_only(site: Site) -> None:
    coord = await site.page("coord")
    ann = await site.page("ann")
    third = await site.page("third")
    for page in (coord, third):
        await open_messages(page)
        await expect(tab(page, name("ann"))).to_be_visible()

    await dialog(coord).get_by_role("button", name="Message privately").click()
    private_tab = tab(coord, f"Private: {name('ann')}")
    await expect(private_tab).to_be_visible(timeout=SHORT)
    await expect(private_tab).to_have_attribute("aria-selected", "true")
    await write(coord, "secret note")
    await expect(message_item(coord, "secret note")).to_be_visible(timeout=SHORT)

    await expect(bubble(ann)).to_have_accessible_name("Messages, 1 unread", timeout=SHORT)
    await open_messages(ann)
    ann_private = tab(ann, f"Private: {name('coord')}")
    await expect(ann_private).to_be_visible()
    await ann_private.click()
    await expect(ann_private).to_have_attribute("aria-selected", "true")
    await expect(message_item(ann, "secret note")).to_be_visible(timeout=SHORT)

    # A message in the agency thread after it, seen by the third member: everything before
    # it has reached that browser too, so what is missing there was never sent to it.
    await tab(coord, name("ann")).click()
    await write(coord, "Shared with the whole hiring team")
    await expect(message_item(third, "Shared with the whole hiring team")).to_be_visible(
        timeout=SHORT
    )
    await expect(dialog(third).get_by_role("tab", name=re.compile("^Private:"))).to_have_count(0)
    await expect(third.get_by_text("secret note")).to_have_count(0)
    assert "secret note" not in await third.content()
    await expect(bubble(third)).to_have_accessible_name(re.compile(r"^Messages"))
    await third.reload()
    await open_messages(third)
    await expect(message_item(third, "Shared with the whole hiring team")).to_be_visible()
    await expect(dialog(third).get_by_role("tab", name=re.compile("^Private:"))).to_have_count(0)
    assert "secret note" not in await third.content()

    # The agency user may write privately to the coordinator only (and to earlier private
    # contacts): never to any member with access.
    await dialog(ann).get_by_role("button", name="Message privately").click()
    contacts = dialog(ann).get_by_role("menu", name="Message privately with")
    await expect(contacts).to_be_visible()
    await expect(contacts.get_by_role("menuitem")).to_have_text([f"{name('coord')} (coordinator)"])

    # Once mem coordinates, ann may write to mem (coordinator) and still to coord (earlier
    # private contact), and never to third.
    await set_candidate(site.api, coordinator="mem")
    await ann.reload()
    await open_messages(ann)
    await dialog(ann).get_by_role("button", name="Message privately").click()
    items = dialog(ann).get_by_role("menu", name="Message privately with").get_by_role("menuitem")
    await expect(items).to_have_count(2)
    await expect(items.filter(has_text=f"{name('mem')} (coordinator)")).to_have_count(1)
    await expect(items.filter(has_text=name("coord"))).to_have_count(1)
    await expect(items.filter(has_text=name("third"))).to_have_count(0)
    await items.filter(has_text=name("mem")).click()
    new_private = tab(ann, f"Private: {name('mem')}")
    await expect(new_private).to_be_visible(timeout=SHORT)
    await expect(new_private).to_have_attribute("aria-selected", "true")


# --- 4. message text is never markup --------------------------------------------------------


async def test_message_bodies_render_as_plain_text(site: Site) -> None:
    img = '<img src=x onerror="window.__xss=1">'
    script = "<script>window.__xss=2</script>"
    coord = await site.page("coord")
    ann = await site.page("ann")

    response = await coord.goto(f"{site.base}/candidates/{CANDIDATE}")
    assert response is not None
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    await ready(coord)

    await open_messages(coord)
    await write(coord, img)
    await expect(message_item(coord, img)).to_be_visible(timeout=SHORT)
    # The top bar quotes it, as text too.
    await expect(unread_line(ann)).to_contain_text(img, timeout=SHORT)

    await open_messages(ann)
    await expect(message_item(ann, img)).to_be_visible(timeout=SHORT)  # from history
    await write(coord, script)
    await expect(message_item(ann, script)).to_be_visible(timeout=SHORT)  # live
    await expect(message_item(coord, script)).to_be_visible()

    for page in (coord, ann):
        assert await page.evaluate("typeof window.__xss") == "undefined"
        await expect(dialog(page).get_by_role("log").locator("img, script")).to_have_count(0)
    assert await bodies(ann) == [img, script]


# --- 5. a server restart ------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def process_site(
    chromium: Browser, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[tuple[Site, ServerProcess]]:
    """A real `agency-messaging serve` process on a SQLite file."""
    path = tmp_path / "served.db"
    shutil.copyfile(sqlite_template, path)
    port = free_port()
    env = {
        "AM_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "AM_DEMO": "1",
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_LOG_LEVEL": "WARNING",
    }
    server = ServerProcess(env, port, tmp_path / "server.log")
    await asyncio.to_thread(server.launch)
    api = api_for(server.url)
    site = Site(server.url, api, chromium)
    try:
        await provision(api)
        yield site, server
    finally:
        await site.close()
        await api.client.aclose()
        await asyncio.to_thread(server.stop)


async def test_pages_reconnect_after_a_restart_and_deliver_what_was_sent_offline(
    process_site: tuple[Site, ServerProcess],
) -> None:
    site, server = process_site
    coord = await site.page("coord")
    ann = await site.page("ann")
    await open_messages(coord)
    await write(coord, "Before the restart")
    await open_messages(ann)
    await expect(message_item(ann, "Before the restart")).to_be_visible(timeout=SHORT)

    await asyncio.to_thread(server.kill)
    await disconnected(coord)
    await write(coord, "Written while the server was down")
    # (the panel has a second status while the socket is down: the "Reconnecting…" banner)
    await expect(dialog(coord).get_by_role("status").filter(has_text="Offline")).to_be_visible()
    await expect(
        dialog(coord).get_by_role("status").filter(has_text="Reconnecting…")
    ).to_be_visible()
    await expect(outgoing(coord, "Written while the server was down")).to_contain_text("Sending…")

    await asyncio.to_thread(server.launch)  # the same port
    await connected(coord, timeout=RECONNECT)
    await connected(ann, timeout=RECONNECT)

    offline = message_item(ann, "Written while the server was down")
    await expect(offline).to_have_count(1, timeout=RECONNECT)
    await expect(message_item(coord, "Written while the server was down")).to_have_count(
        1, timeout=SHORT
    )
    await expect(dialog(coord).get_by_text(re.compile("^Offline"))).to_have_count(0)

    await write(coord, "After the restart")
    await expect(message_item(ann, "After the restart")).to_be_visible(timeout=SHORT)
    assert await bodies(ann) == [
        "Before the restart",
        "Written while the server was down",
        "After the restart",
    ]
    thread = await site.thread_of("ann", {"private": False})
    history = [m["body"] for m in await site.history("ann", thread["id"])]
    assert history == [
        "Before the restart",
        "Written while the server was down",
        "After the restart",
    ], server.log()


async def test_a_tab_resumes_all_its_candidates_in_one_batch_frame_after_a_restart(
    process_site: tuple[Site, ServerProcess],
) -> None:
    """A host page that shows the messages of four candidates loses its socket to a server
    restart, and stays away while messages are sent about three of them and the user loses
    access to the fourth. Once back, it shows each message once and the fourth as lost, and
    it resumed all four with one batch `subscribe`."""
    site, server = process_site
    kept = [CANDIDATE, "c2", "c3"]
    lost = "c4"
    followed = [*kept, lost]
    for candidate in followed[1:]:
        await provision_candidate(site, candidate, members=["coord"])
    threads: dict[str, int] = {}
    for candidate in followed:
        thread = await site.api.open_thread(ORG, "ann", candidate, {"private": False})
        threads[candidate] = thread["id"]
        await site.api.send(ORG, "ann", thread["id"], f"Before, about {candidate}")

    coord = await site.page("coord")
    await coord.evaluate(
        """(ids) => { for (const id of ids) {
             const messages = document.createElement("agency-messages");
             messages.setAttribute("candidate", id);
             document.getElementById("messages-slot").append(messages);
           } }""",
        followed[1:],
    )
    await connected(coord)
    await open_candidate_messages(coord, CANDIDATE)
    await expect(message_item(coord, f"Before, about {CANDIDATE}")).to_be_visible()
    sockets = frame_log(coord)  # the sockets opened from now on, with their frames

    await asyncio.to_thread(server.terminate)  # closes every socket with 1012
    await disconnected(coord)
    await coord.context.set_offline(True)  # the tab stays away until all this is done
    await asyncio.to_thread(server.launch)  # the same port and database
    away = {c: [f"While away, about {c} ({i})" for i in (1, 2)] for c in kept}
    for candidate, sent in away.items():
        for body in sent:
            await site.api.send(ORG, "ann", threads[candidate], body)
    await provision_candidate(site, lost, members=["mem"])  # coord loses access
    await coord.context.set_offline(False)
    await connected(coord, timeout=RECONNECT)

    # What the user sees: the dialog left open and two others, each message once, in order;
    # the fourth with nothing in it and no way to write.
    for candidate in kept:
        if candidate != CANDIDATE:
            await coord.keyboard.press("Escape")
            await expect(dialog(coord)).to_be_hidden()
            await expect(candidate_bubble(coord, candidate)).to_have_accessible_name(
                "Messages, 3 unread", timeout=SHORT
            )
            await open_candidate_messages(coord, candidate)
        expected = [f"Before, about {candidate}", *away[candidate]]
        for body in expected:
            await expect(message_item(coord, body)).to_have_count(1, timeout=SHORT)
        assert await bodies(coord) == expected
    await coord.keyboard.press("Escape")
    await expect(candidate_bubble(coord, lost)).to_have_accessible_name("Messages")
    await open_candidate_messages(coord, lost)
    await expect(dialog(coord).get_by_role("textbox", name="Message")).to_be_hidden()
    await expect(dialog(coord).get_by_role("log").get_by_role("listitem")).to_have_count(0)

    # On the wire: one subscribe on the new socket, the batch form, from the seq each
    # candidate had reached; one ack, with the fourth refused; and each message sent
    # meanwhile replayed once.
    subscribes = [
        frame for socket in sockets for frame in socket.sent if frame.get("op") == "subscribe"
    ]
    assert len(subscribes) == 1, subscribes
    (resume,) = subscribes
    assert "candidate" not in resume
    # (in the order the page followed them, which its elements' start-ups decide)
    assert sorted(item["candidate"] for item in resume["candidates"]) == sorted(followed)
    assert all(item.get("after", 0) > 0 for item in resume["candidates"]), resume
    (ack,) = [
        frame
        for socket in sockets
        for frame in socket.received
        if frame.get("type") == "ack" and frame.get("ref") == resume["ref"]
    ]
    results = {result["candidate"]: result for result in ack["candidates"]}
    assert [results[c]["reset"] for c in kept] == [False] * len(kept), ack
    assert results[lost]["error"]["code"] == "not_found", ack
    replayed = [
        frame["message"]["body"]
        for socket in sockets
        for frame in socket.received
        if frame.get("type") == "message.created"
    ]
    assert sorted(replayed) == sorted(body for sent in away.values() for body in sent)
    following = await coord.evaluate("[...window.__amTestClient.subscriptions.keys()]")
    assert sorted(following) == sorted(kept)


async def provision_candidate(site: Site, candidate: str, *, members: list[str]) -> None:
    """`candidate`, coordinated by the first of `members`, with agency user ann."""
    await site.api.provision(
        f"{ORG}/candidates/{candidate}",
        {
            "name": f"Candidate {candidate}",
            "coordinator": members[0],
            "members": members,
            "agency_users": ["ann"],
        },
    )


@dataclass
class SocketFrames:
    """The frames one of a page's WebSockets sent and received, parsed."""

    url: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)


def frame_log(page: Page) -> list[SocketFrames]:
    """Records the frames of every WebSocket that `page` opens from now on."""
    sockets: list[SocketFrames] = []

    def opened(socket: WebSocket) -> None:
        log = SocketFrames(socket.url)
        sockets.append(log)
        socket.on("framesent", lambda payload: log.sent.append(json.loads(payload)))
        socket.on("framereceived", lambda payload: log.received.append(json.loads(payload)))

    page.on("websocket", opened)
    return sockets


def candidate_bubble(page: Page, candidate: str) -> Locator:
    """The bubble of a candidate's <agency-messages>, on a page with several of them."""
    return page.locator(f'agency-messages[candidate="{candidate}"]').get_by_role(
        "button", name=BUBBLE_NAME
    )


async def open_candidate_messages(page: Page, candidate: str) -> None:
    await candidate_bubble(page, candidate).click()
    await expect(dialog(page)).to_be_visible()


# --- 6. history paging ---------------------------------------------------------------------


async def test_the_dialog_pages_back_through_a_long_history(site: Site) -> None:
    thread = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    expected = [f"History message {i:02d}" for i in range(1, 61)]
    sent = [await site.send("coord", thread["id"], body) for body in expected]
    # Read up to the 55th: the dialog opens at the first unread one, on the newest page.
    await site.read("ann", thread["id"], sent[54]["id"])

    ann = await site.page("ann")
    await expect(bubble(ann)).to_have_accessible_name("Messages, 5 unread")
    await open_messages(ann)
    await expect(message_item(ann, expected[-1])).to_be_visible()
    shown = await bodies(ann)
    assert shown == expected[-len(shown) :]
    assert len(shown) < 60
    await expect(ann.get_by_text(expected[0], exact=True)).to_have_count(0)

    earlier = dialog(ann).get_by_role("button", name="Load earlier messages")
    for _ in range(3):
        if not await earlier.is_visible():
            break
        await earlier.click()
        await expect(ann.get_by_text(expected[0], exact=True)).to_have_count(1, timeout=SHORT)
    await expect(earlier).to_be_hidden()
    assert await bodies(ann) == expected
    await expect(dialog(ann).get_by_role("log").get_by_role("listitem")).to_have_count(60)
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)


# --- 7. keyboard and blue dots ------------------------------------------------------------


async def test_keyboard_opens_and_closes_the_dialog_and_the_list_shows_live_blue_dots(
    site: Site,
) -> None:
    ann_list = await site.page("ann", path="/")
    row = ann_list.get_by_role("listitem").filter(
        has=ann_list.get_by_role("link", name=CANDIDATE_NAME)
    )
    await expect(row).to_be_visible()
    await expect(row.get_by_role("img")).to_have_count(0)

    thread = await site.thread_of("coord", {"agency_user": "ann", "private": False})
    await site.send("coord", thread["id"], "Can you send the references?")
    await site.send("coord", thread["id"], "And the notice period?")
    dot = row.get_by_role("img", name=re.compile(r"^\d+ unread$"))
    await expect(dot).to_be_visible(timeout=SHORT)
    await expect(dot).to_have_accessible_name("2 unread")

    ann = await site.open(ann_list.context)
    await expect(bubble(ann)).to_have_accessible_name("Messages, 2 unread")
    await bubble(ann).focus()
    await ann.keyboard.press("Enter")
    await expect(dialog(ann)).to_be_visible()
    await expect(dialog(ann).get_by_role("textbox", name="Message")).to_be_focused()
    await expect(message_item(ann, "And the notice period?")).to_be_visible()
    await ann.keyboard.press("Escape")
    await expect(dialog(ann)).to_be_hidden()
    await expect(bubble(ann)).to_be_focused()

    # Reading in the other tab takes the dot off the list, live.
    await expect(row.get_by_role("img")).to_have_count(0, timeout=SHORT)
    await ann_list.reload()
    await expect(row).to_be_visible()
    await expect(row.get_by_role("img")).to_have_count(0)


async def test_blue_dots_move_live_between_two_users_over_protocol_2(site: Site) -> None:
    """Ann watches (the candidate list, and the candidate's page), coord writes: every dot
    moves live, with the socket speaking protocol 2 (unread changes in `unread.batch`)."""
    ann_list = await site.page("ann", path="/")
    sockets = frame_log(ann_list)
    await ann_list.reload()  # so that the log sees the socket from its handshake on
    await ready(ann_list)
    protocol = await ann_list.evaluate("window.__amTestClient.socket.protocol")
    assert protocol == SUBPROTOCOL_V2
    ann = await site.open(ann_list.context)
    row = ann_list.get_by_role("listitem").filter(
        has=ann_list.get_by_role("link", name=CANDIDATE_NAME)
    )
    await expect(row).to_be_visible()
    await expect(row.get_by_role("img")).to_have_count(0)

    coord = await site.page("coord")
    await open_messages(coord)
    await write(coord, "Is she free on Monday?")
    await write(coord, "Or else on Tuesday?")
    dot = row.get_by_role("img", name=re.compile(r"^\d+ unread$"))
    await expect(dot).to_have_accessible_name("2 unread", timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages, 2 unread", timeout=SHORT)
    await expect(unread_line(ann)).to_contain_text("Or else on Tuesday?", timeout=SHORT)

    # Ann reads on the candidate's page: the list's dot goes, live.
    await open_messages(ann)
    await expect(message_item(ann, "Or else on Tuesday?")).to_be_visible()
    await expect(row.get_by_role("img")).to_have_count(0, timeout=SHORT)
    await expect(bubble(ann)).to_have_accessible_name("Messages", timeout=SHORT)
    received = {frame["type"] for socket in sockets for frame in socket.received}
    assert "unread.batch" in received and "unread" not in received, received


# --- 8. screenshots --------------------------------------------------------------------------


async def test_screenshots_of_member_agency_and_phone_views(site: Site) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    agency = await site.thread_of("ann", {"private": False})
    await site.send("ann", agency["id"], "Hi! Jamie is available for interviews next week.")
    await site.send("coord", agency["id"], "Great, thanks. Could you share her salary range?")
    await site.send("ann", agency["id"], "She is looking for 85-90k, flexible on benefits.")
    await site.send("ann", agency["id"], "Her portfolio: https://example.com/jamie-rivera")
    await site.send("mem", agency["id"], "Tuesday 10:00 works for the first interview.")
    private = await site.thread_of("coord", {"agency_user": "ann", "private": True})
    await site.send("coord", private["id"], "Between us: she is our top pick so far.")
    await site.send("ann", agency["id"], "Tuesday is confirmed.")

    coord = await site.page("coord")
    await expect(unread_line(coord)).to_contain_text("New message from")
    await open_messages(coord)
    await expect(message_item(coord, "Tuesday is confirmed.")).to_be_visible()
    await expect(unread_line(coord)).to_be_empty(timeout=SHORT)
    await coord.screenshot(path=str(ARTIFACTS / "member-view.png"))

    ann = await site.page("ann")
    await expect(bubble(ann)).to_have_accessible_name(re.compile("unread"))
    await ann.screenshot(path=str(ARTIFACTS / "agency-page.png"))
    await open_messages(ann)
    await expect(message_item(ann, "Tuesday is confirmed.")).to_be_visible()
    await ann.screenshot(path=str(ARTIFACTS / "agency-view.png"))

    phone = await site.page("coord", viewport=PHONE)
    await open_messages(phone)
    await expect(message_item(phone, "Tuesday is confirmed.")).to_be_visible()
    await phone.screenshot(path=str(ARTIFACTS / "member-phone.png"))

    # The thread switcher on a phone, with more threads than fit: one row that scrolls.
    for user, display in (("ben", "Ben Bauer"), ("cat", "Cat Castillo")):
        await site.api.provision(
            f"{ORG}/users/{user}",
            {"name": display, "email": f"{user}@example.com", "kind": "agency", "agency": "ag"},
        )
    await site.api.provision(
        f"{ORG}/candidates/{CANDIDATE}",
        {
            "name": CANDIDATE_NAME,
            "coordinator": "coord",
            "members": ["coord", "mem", "third"],
            "agency_users": ["ann", "ben", "cat"],
        },
    )
    ben = await site.thread_of("ben", {"private": False})
    await site.send("ben", ben["id"], "Hello from Ben: a second candidate profile is coming.")
    await expect(dialog(phone).get_by_role("tab")).to_have_count(4, timeout=SHORT)
    await expect(tab(phone, "Ben Bauer")).to_have_accessible_name(re.compile("1 unread$"))
    await phone.screenshot(path=str(ARTIFACTS / "phone-threads.png"))
    for shot in ("member-view.png", "agency-view.png", "member-phone.png", "phone-threads.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000
