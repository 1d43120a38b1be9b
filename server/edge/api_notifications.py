"""Email alert preferences: for the signed-in user, and through unsubscribe links."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mailer import preferences
from server.domain import facts
from server.domain.errors import InvalidInput, NotFound
from server.edge.api import principal
from server.edge.http import JSONResponse, read_body, read_json
from server.edge.pages import SECURITY_HEADERS
from server.edge.schemas import NotificationsIn
from server.edge.services import services

_pages = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
)


async def _preferences_json(request: Request, user_pk: int) -> dict[str, object]:
    async with services(request).db.read() as session:
        return (await preferences.get_preferences(session, user_pk)).to_json()


async def get_notifications(request: Request) -> Response:
    who = await principal(request)
    return JSONResponse(await _preferences_json(request, who.actor.pk))


async def put_notifications(request: Request) -> Response:
    """Replaces the given settings: `muted` (every candidate) and/or `muted_candidates`."""
    who = await principal(request)
    body = await read_json(request, NotificationsIn)
    async with services(request).db.write() as session:
        candidate_pks = None
        if body.muted_candidates is not None:
            candidate_pks = set()
            for candidate_id in set(body.muted_candidates):
                try:
                    candidate, _ = await facts.visible_candidate(session, who.actor, candidate_id)
                except NotFound:
                    raise InvalidInput(
                        f"muted_candidates: no such candidate {candidate_id!r}."
                    ) from None
                candidate_pks.add(candidate.pk)
        await preferences.set_preferences(
            session, who.actor.pk, muted=body.muted, candidate_pks=candidate_pks
        )
    return JSONResponse(await _preferences_json(request, who.actor.pk))


def _page(status: int = 200, **context: object) -> Response:
    values: dict[str, object] = {
        "error": None,
        "done": None,
        "name": "",
        "token": "",
        "candidate": None,
    }
    html = _pages.get_template("unsubscribe.html").render(values | context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


async def unsubscribe_page(request: Request) -> Response:
    """The link in every alert: shows what it would mute. GET changes nothing, since mail
    scanners follow links."""
    s = services(request)
    token = request.query_params.get("token", "")
    try:
        ask = preferences.read_unsubscribe_token(s.settings.secret, token)
    except preferences.BadUnsubscribeToken as error:
        return _page(400, error=str(error))
    async with s.db.read() as session:
        target = await preferences.unsubscribe_target(session, ask)
    if target is None:
        return _page(400, error=preferences.INVALID_UNSUBSCRIBE_LINK)
    return _page(name=target.user_name, token=token, candidate=target.candidate_name)


async def unsubscribe(request: Request) -> Response:
    """Mutes alerts: from the page's form (scope=candidate|all) or a mail client's
    one-click unsubscribe (RFC 8058: the token in the URL, List-Unsubscribe=One-Click)."""
    s = services(request)
    raw = await read_body(request)
    form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items() if v}
    token = form.get("token") or request.query_params.get("token", "")
    try:
        ask = preferences.read_unsubscribe_token(s.settings.secret, token)
    except preferences.BadUnsubscribeToken as error:
        return _page(400, error=str(error))
    if form.get("scope") == "all":
        ask = preferences.UnsubscribeRequest(ask.user_pk, None)
    async with s.db.write() as session:
        if await preferences.unsubscribe_target(session, ask) is None:
            return _page(400, error=preferences.INVALID_UNSUBSCRIBE_LINK)
        await preferences.mute(session, ask)
    what = "about this candidate" if ask.candidate_pk else "at all"
    return _page(done=f"Done: you will get no more alert emails {what}.")


routes = [
    Route("/api/v1/me/notifications", get_notifications, methods=["GET"]),
    Route("/api/v1/me/notifications", put_notifications, methods=["PUT"]),
    Route("/unsubscribe", unsubscribe_page, methods=["GET"]),
    Route("/unsubscribe", unsubscribe, methods=["POST"]),
]
