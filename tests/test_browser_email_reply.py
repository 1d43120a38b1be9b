"""The demo, as `make run` starts it, with replies by email: real `agency-messaging demo` and
`serve --inbound-port` processes (SQLite, the in-process broker, alerts written as `.eml`
files), Mia signed in with her printed login link in Chromium. Mia writes to Ann; the alert
to Ann lands under var/mail/ with its Reply-To; Ann answers it over SMTP, as `swaks` would;
the answer appears in Mia's open conversation, live, without a reload."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from harness.services import VENV_BIN, free_port, wait_for_port
from tests.support.browser import DESKTOP, message_item, open_messages, ready, write
from tests.support.smtp import send_reply

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("browser")]

ANN = "ann@talentco.example"


class Demo:
    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.inbound_port = free_port()
        self.env = {
            **os.environ,
            "AM_DEMO": "1",
            "AM_REPLY_DOMAIN": "reply.localhost",
            "AM_VAR_DIR": str(var_dir),
            "AM_EMAIL_DELAY_SECONDS": "0.5",
        }
        for name in ("AM_SECRET", "AM_SERVICE_TOKEN", "AM_DATABASE_URL", "AM_BROKER_URL"):
            self.env.pop(name, None)
        self.server: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> list[str]:
        return [str(VENV_BIN / "agency-messaging"), *args]

    def start(self) -> str:
        """Runs `migrate`, `demo` and `serve` as `make run` does; returns Mia's login link."""
        subprocess.run(self.command("migrate"), env=self.env, check=True, capture_output=True)
        ports = ["--port", str(self.port), "--inbound-port", str(self.inbound_port)]
        printed = subprocess.run(
            self.command("demo", *ports), env=self.env, check=True, capture_output=True, text=True
        ).stdout
        assert f"send a reply over SMTP to localhost:{self.inbound_port}" in printed, printed
        mia = re.search(r"Mia Manager \(hiring member\):\s+(\S+)", printed)
        assert mia is not None, printed
        with (self.var_dir / "serve.log").open("ab") as log:
            self.server = subprocess.Popen(
                self.command("serve", *ports), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, timeout=30)
        wait_for_port(self.inbound_port, timeout=30)
        return mia.group(1)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=20)

    def alert_to_ann(self, timeout: float = 20.0) -> EmailMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in sorted((self.var_dir / "mail").glob("*.eml")):
                message = message_from_bytes(path.read_bytes(), policy=policy.default)
                assert isinstance(message, EmailMessage)
                if ANN in str(message["To"]) and "Tuesday at 3pm" in path.read_text():
                    return message
            time.sleep(0.1)
        raise AssertionError(f"no alert to Ann in {self.var_dir / 'mail'}")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path / "var")
    try:
        yield running
    finally:
        running.stop()


async def test_a_reply_sent_over_smtp_to_the_demo_appears_live_in_the_browser(
    chromium: Browser, demo: Demo
) -> None:
    login = await asyncio.to_thread(demo.start)
    context = await chromium.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    try:
        page = await context.new_page()
        await page.goto(login)
        await page.wait_for_url(re.compile(r"/candidates/c1$"))
        await ready(page)
        await open_messages(page)
        # The conversation the demo seeds has loaded: the compose box now sends into it.
        seeded = "Perfect, I'll let him know. He asked about remote days."
        await expect(message_item(page, seeded)).to_be_visible()
        await write(page, "Could Carl do Tuesday at 3pm?")
        await expect(message_item(page, "Could Carl do Tuesday at 3pm?")).to_be_visible()

        alert = await asyncio.to_thread(demo.alert_to_ann)
        ((_, reply_to),) = getaddresses([str(alert["Reply-To"])])
        assert reply_to.endswith("@reply.localhost"), reply_to
        code, text = await asyncio.to_thread(
            send_reply,
            demo.inbound_port,
            sender=ANN,
            to=reply_to,
            body="Yes, Tuesday at 3pm is confirmed.",
            host="localhost",
        )
        assert code == 250, text
        await expect(message_item(page, "Yes, Tuesday at 3pm is confirmed.")).to_be_visible(
            timeout=5_000
        )
    finally:
        await context.close()
