"""The demo: a hiring company, an agency, three candidates, and login links for everyone."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import select

from server.domain.actions import Messaging, OpenThreadRequest
from server.domain.auth import make_user_token
from server.domain.events import DiscardingSink
from server.domain.facts import load_principal
from server.domain.provisioning import CandidateSpec, Provisioning, UserSpec
from server.settings import Settings
from storage.database import Database
from storage.models import Message

ORG = ("acme", "Acme Corp")
AGENCY = ("talentco", "TalentCo Recruiting")
MEMBERS = [
    ("mia", "Mia Manager", "mia@acme.example"),
    ("max", "Max Member", "max@acme.example"),
    ("morgan", "Morgan Lee", "morgan@acme.example"),
]
AGENCY_USERS = [
    ("ann", "Ann Agent", "ann@talentco.example"),
    ("aaron", "Aaron Scout", "aaron@talentco.example"),
]
CANDIDATES = [
    ("c1", "Carl Didate", "mia", ["mia", "max"], ["ann"]),
    ("c2", "Dana Developer", "max", ["max", "morgan"], ["aaron"]),
    ("c3", "Erin Engineer", "morgan", ["mia", "morgan"], ["ann"]),
]
LOGIN_TTL_SECONDS = 24 * 3600


def ensure_demo_env(path: Path) -> dict[str, str]:
    """Secrets for the demo, made once and kept under var/ so that `serve` shares them."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"AM_SECRET={secrets.token_urlsafe(32)}\nAM_SERVICE_TOKEN={secrets.token_urlsafe(32)}\n"
        )
        path.chmod(0o600)
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip():
            values[key.strip()] = value.strip()
    return values


async def provision_demo(settings: Settings) -> list[tuple[str, str, str]]:
    """Provisions the demo org; returns (user name, role, login link) for each demo user."""
    db = Database(settings.database_url)
    try:
        sink = DiscardingSink()
        p = Provisioning(db, sink)
        await p.put_org(ORG[0], ORG[1])
        await p.put_agency(ORG[0], AGENCY[0], AGENCY[1])
        for user_id, name, email in MEMBERS:
            await p.put_user(ORG[0], user_id, UserSpec(name, email, "member", None))
        for user_id, name, email in AGENCY_USERS:
            await p.put_user(ORG[0], user_id, UserSpec(name, email, "agency", AGENCY[0]))
        for cand_id, name, coordinator, members, agency_users in CANDIDATES:
            await p.put_candidate(
                ORG[0], cand_id, CandidateSpec(name, coordinator, members, agency_users)
            )
        await _seed_conversation(db, Messaging(db, sink))
    finally:
        await db.close()

    links = []
    landing = {"mia": "c1", "max": "c1", "morgan": "c3", "ann": "c1", "aaron": "c2"}
    for user_id, name, _ in MEMBERS + AGENCY_USERS:
        token = make_user_token(settings.secret, ORG[0], user_id, LOGIN_TTL_SECONDS)
        role = "agency recruiter" if any(u[0] == user_id for u in AGENCY_USERS) else "hiring member"
        link = f"{settings.public_url}/login#token={token}&next=/candidates/{landing[user_id]}"
        links.append((name, role, link))
    return links


async def _seed_conversation(db: Database, messaging: Messaging) -> None:
    async with db.read() as session:
        if await session.scalar(select(Message.id).limit(1)) is not None:
            return
        ann = await load_principal(session, ORG[0], "ann")
        mia = await load_principal(session, ORG[0], "mia")
    assert ann is not None and mia is not None
    thread, _ = await messaging.open_thread(ann, "c1", OpenThreadRequest(private=False))
    thread_id = int(thread["id"])  # type: ignore[call-overload]
    await messaging.send(ann, thread_id, "Hi! Carl is available to interview next week.", None)
    await messaging.send(mia, thread_id, "Great, thanks Ann. Tuesday afternoon works for us.", None)
    await messaging.send(
        ann, thread_id, "Perfect, I'll let him know. He asked about remote days.", None
    )
