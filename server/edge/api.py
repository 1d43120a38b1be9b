"""The messaging API for members and agency users (user tokens or the session cookie)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.protocol import HOST_ID, MAX_ID
from server.domain import facts, rules, views
from server.domain.actions import OpenThreadRequest
from server.domain.auth import SESSION_COOKIE, authenticate_token, bearer_token
from server.domain.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from server.domain.facts import Principal
from server.edge.http import JSONResponse, path_int, query_int, read_json
from server.edge.origins import origin_allowed
from server.edge.schemas import (
    MAX_CANDIDATE_PAGE,
    MAX_MESSAGE_PAGE,
    OpenThreadIn,
    ReadIn,
    SendIn,
    SessionIn,
)
from server.edge.services import services
from storage.models import Candidate

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _check_origin(request: Request, *, required: bool) -> None:
    origin = request.headers.get("origin")
    if origin is None:
        if required:
            raise Forbidden("A cookie-authenticated request must carry an Origin header.")
        return
    s = services(request).settings
    if not origin_allowed(
        origin,
        scheme=request.url.scheme,
        host=request.headers.get("host"),
        allowed=s.allowed_origins,
        public_url=s.public_url,
    ):
        raise Forbidden("Requests from this origin are not allowed.")


async def principal(request: Request) -> Principal:
    """The caller: a bearer token, else the session cookie (CSRF-checked on unsafe methods)."""
    s = services(request)
    token = bearer_token(request.headers)
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
        if token is None:
            raise Unauthorized("Sign in: send a bearer token or the session cookie.")
        if request.method in UNSAFE_METHODS:
            _check_origin(request, required=True)
    who, _ = await authenticate_token(s.db, s.settings.secret, token)
    return who


# --- session --------------------------------------------------------------------------


async def create_session(request: Request) -> Response:
    """Trades a user token for an HttpOnly session cookie that lasts as long as the token."""
    _check_origin(request, required=False)
    body = await read_json(request, SessionIn)
    s = services(request)
    who, exp = await authenticate_token(s.db, s.settings.secret, body.token)
    response = JSONResponse({"user": who.user_json(), "org": who.org_id})
    response.set_cookie(
        SESSION_COOKIE,
        body.token,
        max_age=max(0, exp - int(time.time())),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def delete_session(request: Request) -> Response:
    if request.cookies.get(SESSION_COOKIE) is not None:
        _check_origin(request, required=True)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


async def me(request: Request) -> Response:
    who = await principal(request)
    return JSONResponse({**who.user_json(), "org": who.org_id})


# --- candidates -----------------------------------------------------------------------


def path_candidate(request: Request) -> str:
    candidate_id: str = request.path_params["cand"]
    if not HOST_ID.fullmatch(candidate_id):
        raise InvalidInput("The candidate id must match [A-Za-z0-9_.-]{1,64}.")
    return candidate_id


async def _visible_candidate(
    request: Request, who: Principal
) -> tuple[Candidate, rules.CandidateAccess]:
    candidate_id = path_candidate(request)
    async with services(request).db.read() as session:
        return await facts.visible_candidate(session, who.actor, candidate_id)


async def list_candidates(request: Request) -> Response:
    """The caller's candidates with their unread counts (an extension of the contract)."""
    who = await principal(request)
    limit = query_int(request, "limit", low=1, high=MAX_CANDIDATE_PAGE) or 100
    after = request.query_params.get("after") or None
    if after is not None and not HOST_ID.fullmatch(after):
        raise InvalidInput("after must be a candidate id.")
    async with services(request).db.read() as session:
        rows, has_more = await views.visible_candidates(
            session, who.actor, after=after, limit=limit
        )
        unread: dict[int, int] = {}
        for item in await views.unread_threads(session, who.actor):
            unread[item.candidate_pk] = unread.get(item.candidate_pk, 0) + item.unread
    return JSONResponse(
        {
            "candidates": [
                {"id": c.ext_id, "name": c.name, "unread": unread.get(c.pk, 0)} for c in rows
            ],
            "has_more": has_more,
        }
    )


async def get_candidate(request: Request) -> Response:
    who = await principal(request)
    candidate, access = await _visible_candidate(request, who)
    async with services(request).db.read() as session:
        partners = await facts.earlier_private_partners(session, who.actor)
        contacts = rules.private_contacts(who.actor, access, partners)
        agency_pks = access.agency_user_pks if who.actor.is_member else frozenset({who.actor.pk})
        wanted = set(agency_pks) | set(contacts)
        if access.coordinator_pk is not None:
            wanted.add(access.coordinator_pk)
        users = await views.users_by_pk(session, wanted)
        unread = sum(t.unread for t in await views.unread_threads(session, who.actor, candidate.pk))
    coordinator = users.get(access.coordinator_pk) if access.coordinator_pk else None
    return JSONResponse(
        {
            "id": candidate.ext_id,
            "name": candidate.name,
            "coordinator": views.user_json(coordinator),
            "agency_users": views.ordered_users(users, agency_pks),
            "private_contacts": views.ordered_users(users, contacts),
            "unread": unread,
            "seq": candidate.last_seq,
        }
    )


async def list_threads(request: Request) -> Response:
    who = await principal(request)
    candidate, _ = await _visible_candidate(request, who)
    async with services(request).db.read() as session:
        threads = await views.visible_threads(session, who.actor, candidate.pk)
        body = await views.threads_json(session, who.actor, threads, candidate.ext_id)
    return JSONResponse({"threads": body})


async def open_thread(request: Request) -> Response:
    who = await principal(request)
    body = await read_json(request, OpenThreadIn)
    thread, created = await services(request).messaging.open_thread(
        who,
        path_candidate(request),
        OpenThreadRequest(private=body.private, agency_user=body.agency_user, member=body.member),
    )
    return JSONResponse(thread, status_code=201 if created else 200)


# --- messages -------------------------------------------------------------------------


async def list_messages(request: Request) -> Response:
    who = await principal(request)
    thread_id = path_int(request, "id")
    before = query_int(request, "before", low=1, high=MAX_ID)
    after = query_int(request, "after", low=0, high=MAX_ID)
    limit = query_int(request, "limit", low=1, high=MAX_MESSAGE_PAGE) or 50
    if before is not None and after is not None:
        raise InvalidInput("Send before or after, not both.")
    async with services(request).db.read() as session:
        target = await facts.thread_target(await session.connection(), who.actor, thread_id)
        rules.check_read(who.actor, target.access, target.ref)
        rows, has_more = await views.message_page(
            session, thread_id, before=before, after=after, limit=limit
        )
    return JSONResponse({"messages": [r.to_json() for r in rows], "has_more": has_more})


async def send_message(request: Request) -> Response:
    who = await principal(request)
    thread_id = path_int(request, "id")
    body = await read_json(request, SendIn)
    s = services(request)
    s.send_limiter.take(who.key)
    message, created = await s.messaging.send(who, thread_id, body.body, body.client_id)
    if created:
        s.metrics.messages_sent.labels("rest").inc()
    return JSONResponse(message, status_code=201 if created else 200)


async def delete_message(request: Request) -> Response:
    who = await principal(request)
    await services(request).messaging.delete(who, path_int(request, "id"))
    return Response(status_code=204)


async def mark_read(request: Request) -> Response:
    who = await principal(request)
    thread_id = path_int(request, "id")
    body = await read_json(request, ReadIn)
    unread = await services(request).messaging.mark_read(who, thread_id, body.message_id)
    return JSONResponse({"unread": unread})


async def unread_summary(request: Request) -> Response:
    """The blue dots: candidates with unread messages, each with its newest unread message."""
    who = await principal(request)
    async with services(request).db.read() as session:
        per_candidate: dict[int, tuple[int, int]] = {}
        for t in await views.unread_threads(session, who.actor):
            count, newest = per_candidate.get(t.candidate_pk, (0, 0))
            per_candidate[t.candidate_pk] = (count + t.unread, max(newest, t.newest_unread_id or 0))
        latest = await views.messages_by_id(session, [n for _, n in per_candidate.values()])
    out = []
    for count, newest in per_candidate.values():
        row = latest.get(newest)
        if row is None:
            raise NotFound("No such message.")  # pragma: no cover - same snapshot
        out.append({"candidate": row.candidate_id, "unread": count, "latest": row.to_json()})
    out.sort(key=lambda item: -item["latest"]["id"])  # type: ignore[index,operator]
    return JSONResponse({"candidates": out})


routes = [
    Route("/api/v1/session", create_session, methods=["POST"]),
    Route("/api/v1/session", delete_session, methods=["DELETE"]),
    Route("/api/v1/me", me, methods=["GET"]),
    Route("/api/v1/candidates", list_candidates, methods=["GET"]),
    Route("/api/v1/candidates/{cand}", get_candidate, methods=["GET"]),
    Route("/api/v1/candidates/{cand}/threads", list_threads, methods=["GET"]),
    Route("/api/v1/candidates/{cand}/threads", open_thread, methods=["POST"]),
    Route("/api/v1/threads/{id}/messages", list_messages, methods=["GET"]),
    Route("/api/v1/threads/{id}/messages", send_message, methods=["POST"]),
    Route("/api/v1/threads/{id}/read", mark_read, methods=["POST"]),
    Route("/api/v1/messages/{id}", delete_message, methods=["DELETE"]),
    Route("/api/v1/unread", unread_summary, methods=["GET"]),
]
