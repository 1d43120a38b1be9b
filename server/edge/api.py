"""The messaging API for members and agency users (user tokens or the session cookie)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.protocol import HOST_ID, MAX_ID
from server.domain import inbox, queries
from server.domain.actions import OpenThreadRequest
from server.domain.auth import SESSION_COOKIE, authenticate_token, bearer_token
from server.domain.errors import Forbidden, InvalidInput, Unauthorized
from server.domain.facts import Principal
from server.edge.http import JSONResponse, path_host_id, path_int, query_int, read_json
from server.edge.origins import connection_origin_allowed
from server.edge.schemas import (
    DEFAULT_CANDIDATE_PAGE,
    DEFAULT_CONVERSATION_PAGE,
    DEFAULT_MESSAGE_PAGE,
    MAX_CANDIDATE_PAGE,
    MAX_CONVERSATION_PAGE,
    MAX_MESSAGE_PAGE,
    OpenThreadIn,
    ReadIn,
    SendIn,
    SessionIn,
)
from server.edge.services import services

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _check_origin(request: Request, *, required: bool) -> None:
    if request.headers.get("origin") is None:
        if required:
            raise Forbidden("A cookie-authenticated request must carry an Origin header.")
        return
    if not connection_origin_allowed(request, services(request).settings):
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
    return path_host_id(request, "cand", "candidate")


async def list_candidates(request: Request) -> Response:
    """The caller's candidates with their unread counts and newest visible message (an
    extension of the contract), by id or newest activity first."""
    who = await principal(request)
    limit = query_int(request, "limit", low=1, high=MAX_CANDIDATE_PAGE) or DEFAULT_CANDIDATE_PAGE
    order = request.query_params.get("order") or inbox.BY_ID
    if order not in inbox.CANDIDATE_ORDERS:
        raise InvalidInput(f"order must be one of: {', '.join(inbox.CANDIDATE_ORDERS)}.")
    after = request.query_params.get("after") or None
    if after is not None and not HOST_ID.fullmatch(after):
        raise InvalidInput("after must be a candidate id.")
    before = query_int(request, "before", low=1, high=MAX_ID)
    if before is not None and order != inbox.BY_ACTIVITY:
        raise InvalidInput("before pages the activity order: send order=activity with it.")
    if before is not None and after is not None:
        raise InvalidInput("Send before or after, not both.")
    async with services(request).db.read() as session:
        page, has_more = await queries.candidate_page(
            session, who.actor, after=after, limit=limit, order=order, before=before
        )
    return JSONResponse({"candidates": page, "has_more": has_more})


async def get_candidate(request: Request) -> Response:
    who = await principal(request)
    candidate_id = path_candidate(request)
    async with services(request).db.read() as session:
        candidate = await queries.candidate_detail(session, who.actor, candidate_id)
    return JSONResponse(candidate)


async def list_threads(request: Request) -> Response:
    who = await principal(request)
    candidate_id = path_candidate(request)
    async with services(request).db.read() as session:
        threads = await queries.candidate_threads(session, who.actor, candidate_id)
    return JSONResponse({"threads": threads})


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
    limit = query_int(request, "limit", low=1, high=MAX_MESSAGE_PAGE) or DEFAULT_MESSAGE_PAGE
    if before is not None and after is not None:
        raise InvalidInput("Send before or after, not both.")
    async with services(request).db.read() as session:
        messages, has_more = await queries.history(
            session, who.actor, thread_id, before=before, after=after, limit=limit
        )
    return JSONResponse({"messages": messages, "has_more": has_more})


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
    s = services(request)
    await s.messaging.delete(who, path_int(request, "id"))
    s.metrics.messages_deleted.labels("rest").inc()
    return Response(status_code=204)


async def mark_read(request: Request) -> Response:
    who = await principal(request)
    thread_id = path_int(request, "id")
    body = await read_json(request, ReadIn)
    unread = await services(request).messaging.mark_read(who, thread_id, body.message_id)
    return JSONResponse({"unread": unread})


async def list_conversations(request: Request) -> Response:
    """The caller's threads across candidates, newest activity first (the inbox)."""
    who = await principal(request)
    before = query_int(request, "before", low=1, high=MAX_ID)
    limit = (
        query_int(request, "limit", low=1, high=MAX_CONVERSATION_PAGE) or DEFAULT_CONVERSATION_PAGE
    )
    async with services(request).db.read() as session:
        page, has_more = await inbox.conversations(session, who.actor, before=before, limit=limit)
    return JSONResponse({"conversations": page, "has_more": has_more})


async def unread_summary(request: Request) -> Response:
    """The blue dots: candidates with unread messages, each with its newest unread message."""
    who = await principal(request)
    async with services(request).db.read() as session:
        candidates = await queries.unread_summary(session, who.actor)
    return JSONResponse({"candidates": candidates})


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
    Route("/api/v1/conversations", list_conversations, methods=["GET"]),
    Route("/api/v1/unread", unread_summary, methods=["GET"]),
]
