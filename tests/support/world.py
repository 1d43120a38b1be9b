"""The test world: the secrets tests sign with, settings for a test app, the `Api` client
that provisions and acts as users over HTTP, and the small org most tests start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server.domain.auth import make_user_token
from server.settings import Settings
from storage import migrate
from storage.database import Database

SECRET = "test-secret-0123456789abcdef-0123456789abcdef"
SERVICE_TOKEN = "test-service-token-0123456789"


async def migrate_database(url: str) -> None:
    """Brings a database to the newest schema."""
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.close()


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret": SECRET,
        "service_token": SERVICE_TOKEN,
        "database_url": db_url,
        "var_dir": tmp_path / "var",
        "public_url": "http://testserver",
        "send_rate_per_minute": 0,
        "email_delay_seconds": 120.0,
        "demo": True,  # the demo host pages: browser tests use them
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    """An HTTP client of the app with helpers for provisioning and for acting as a user."""

    client: httpx.AsyncClient
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def token(self, org: str, user: str) -> str:
        key = (org, user)
        if key not in self.tokens:
            self.tokens[key] = make_user_token(SECRET, org, user)
        return self.tokens[key]

    def as_user(self, org: str, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(org, user)}"}

    @property
    def service(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {SERVICE_TOKEN}"}

    async def provision(self, path: str, body: dict[str, Any]) -> httpx.Response:
        response = await self.client.put(f"/api/v1/orgs/{path}", json=body, headers=self.service)
        assert response.status_code in (200, 201), response.text
        return response

    async def org(self, org: str, name: str | None = None) -> None:
        await self.provision(org, {"name": name or org.title()})

    async def agency(self, org: str, agency: str) -> None:
        await self.provision(f"{org}/agencies/{agency}", {"name": agency.title()})

    async def member(self, org: str, user: str) -> None:
        await self.provision(
            f"{org}/users/{user}",
            {
                "name": user.title(),
                "email": f"{user}@{org}.example",
                "kind": "member",
                "agency": None,
            },
        )

    async def agency_user(self, org: str, user: str, agency: str) -> None:
        await self.provision(
            f"{org}/users/{user}",
            {
                "name": user.title(),
                "email": f"{user}@{agency}.example",
                "kind": "agency",
                "agency": agency,
            },
        )

    async def candidate(
        self,
        org: str,
        cand: str,
        *,
        coordinator: str | None,
        members: list[str],
        agency_users: list[str],
    ) -> None:
        await self.provision(
            f"{org}/candidates/{cand}",
            {
                "name": cand.title(),
                "coordinator": coordinator,
                "members": members,
                "agency_users": agency_users,
            },
        )

    async def team(
        self, org: str, *, members: tuple[str, ...], agent: str, candidates: tuple[str, ...]
    ) -> None:
        """An org whose candidates all have `members` (the first coordinating) and `agent`,
        of agency `ag`: the world of the multi-process tests."""
        await self.org(org)
        await self.agency(org, "ag")
        for user in members:
            await self.member(org, user)
        await self.agency_user(org, agent, "ag")
        for cand in candidates:
            await self.candidate(
                org, cand, coordinator=members[0], members=list(members), agency_users=[agent]
            )

    async def get(self, org: str, user: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.as_user(org, user), **kwargs)

    async def post(self, org: str, user: str, path: str, body: Any) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.as_user(org, user))

    async def delete(self, org: str, user: str, path: str) -> httpx.Response:
        return await self.client.delete(path, headers=self.as_user(org, user))

    async def open_thread(
        self, org: str, user: str, cand: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        response = await self.post(org, user, f"/api/v1/candidates/{cand}/threads", body)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    async def send(
        self, org: str, user: str, thread: int, body: str, **extra: Any
    ) -> dict[str, Any]:
        response = await self.post(
            org, user, f"/api/v1/threads/{thread}/messages", {"body": body, **extra}
        )
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result


async def populate_world(api: Api) -> Api:
    """A small org: coordinator `coord`, member `mem` with access, member `out` without,
    agency `ag` with `ann` (linked to c1) and `abe` (not linked), and org `other` with
    `omem` and `oann`. Candidate c1 is in org `acme` (and another c1 in `other`)."""
    await api.org("acme")
    await api.agency("acme", "ag")
    for user in ("coord", "mem", "out"):
        await api.member("acme", user)
    await api.agency_user("acme", "ann", "ag")
    await api.agency_user("acme", "abe", "ag")
    await api.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )
    await api.org("other")
    await api.agency("other", "ag")
    await api.member("other", "omem")
    await api.agency_user("other", "oann", "ag")
    await api.candidate("other", "c1", coordinator="omem", members=["omem"], agency_users=["oann"])
    return api
