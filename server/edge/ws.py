"""The WebSocket endpoint `/ws`: handshake checks, frame validation and the ops.

Every op goes through the same rules and actions as REST. Frames are answered in order
with `ack` or `error` (echoing `ref`); a bad frame gets an error and the socket lives on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
from pydantic import (
    ValidationError,
)
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from channels import protocol
from channels.connection import Connection
from channels.hub import SubscribeRequest
from channels.protocol import (
    CLOSE_CLIENT_GONE,
    CLOSE_IDLE,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_SESSION_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    MAX_FRAME_BYTES,
    ClientFrame,
    Delete,
    Ping,
    Read,
    Send,
    Subscribe,
    SubscribeBatch,
    Unsubscribe,
)
from server.domain import facts, queries, rules
from server.domain.auth import SESSION_COOKIE, authenticate_token, bearer_token
from server.domain.errors import AppError, InvalidInput, NotFound, RateLimited, Unavailable
from server.domain.eventlog import thread_rule
from server.domain.facts import Principal
from server.domain.rules import CandidateAccess
from server.edge.direct import DIRECT
from server.edge.guard import (
    ADDRESS_HANDSHAKES,
    ADDRESS_SOCKETS,
    HANDSHAKE_TIMEOUT,
    TOO_MANY_HANDSHAKES,
)
from server.edge.http import describe_validation, error_response
from server.edge.middleware import UNAVAILABLE_ERRORS
from server.edge.origins import connection_origin_allowed
from server.edge.services import Realtime, Services, services

log = logging.getLogger("agency_messaging.ws")

IN_FLIGHT_GRACE_SECONDS = 10.0
CLOSE_GRACE_SECONDS = 2.0

T = TypeVar("T")


def _error(ref: Any, error: AppError) -> str:
    return protocol.error(ref, error.code, error.message)


# --- handshake ----------------------------------------------------------------------------


async def _authenticate(ws: WebSocket, s: Services) -> tuple[Principal, int] | None:
    """The principal and token expiry, or None when the handshake must be refused."""
    if ws.headers.get("origin") is not None and not connection_origin_allowed(ws, s.settings):
        return None
    try:
        token = bearer_token(ws.headers) or ws.cookies.get(SESSION_COOKIE)
        if token is None:
            return None
        return await authenticate_token(s.db, s.settings.secret, token)
    except AppError:
        return None


async def websocket_endpoint(ws: WebSocket) -> None:
    s = services(ws)
    guard = s.guard
    # The client's address: the peer's, or X-Forwarded-For's from a trusted proxy.
    address = ws.client.host if ws.client else "unknown"
    if not guard.handshakes.acquire(address, guard.limits.max_handshakes_per_address):
        guard.refused(ADDRESS_HANDSHAKES)
        await _deny(ws, RateLimited(TOO_MANY_HANDSHAKES, 1.0))
        return
    try:
        admitted = await _admit(ws, s, address)
    finally:
        guard.handshakes.release(address)
    if admitted is None:
        return
    try:
        await _serve(ws, s, *admitted)
    finally:
        guard.sockets.release(address)


HANDSHAKE_TOO_SLOW = "The handshake could not be completed in time; try again shortly."


async def _admit(ws: WebSocket, s: Services, address: str) -> tuple[Connection, int] | None:
    """Everything before accept, within the handshake timeout: the connection (registered,
    holding a socket of its address) and its token's expiry, or None once refused."""
    try:
        async with asyncio.timeout(s.settings.handshake_timeout_seconds):
            verdict = await _unless_the_client_leaves(ws, _check(ws, s, address))
    except ClientLeft:
        return None  # nobody to answer; whatever the check had started is undone
    except Unavailable as error:
        await _deny(ws, error)
        return None
    except TimeoutError:
        s.guard.refused(HANDSHAKE_TIMEOUT)
        await _deny(ws, Unavailable(HANDSHAKE_TOO_SLOW))
        return None
    except UNAVAILABLE_ERRORS:
        await _refuse_unavailable(ws)
        return None
    if isinstance(verdict, tuple):
        return verdict
    if verdict is None:
        await ws.close(code=1008)  # before accept: the server answers the handshake with 403
    else:  # a cap: accepted, told why in a frame, closed with 4029
        await ws.accept()
        await ws.send_text(_error(None, RateLimited(verdict, 0)))
        await ws.close(CLOSE_TOO_MANY_CONNECTIONS, verdict[:120])
    return None


class ClientLeft(Exception):
    """The client closed its connection before the handshake was answered."""


async def _unless_the_client_leaves(ws: WebSocket, work: Coroutine[Any, Any, T]) -> T:
    """Runs the handshake's work, cancelled as soon as the client gives up on it: a client
    that times out and retries must not leave the server doing each attempt to the end."""
    if (await ws.receive())["type"] != "websocket.connect":  # the first message, always there
        work.close()
        raise ClientLeft
    job = asyncio.ensure_future(work)
    # Before accept, the only message that can come is the client's disconnect.
    leaving = asyncio.ensure_future(ws.receive())
    try:
        await asyncio.wait({job, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not job.done():
            job.cancel()
            # The work undoes itself on cancellation (Hub.register, the socket's place).
            await asyncio.gather(job, return_exceptions=True)
    if job.done() and not job.cancelled():
        return job.result()  # or raises what the work raised
    if leaving.done() and not leaving.cancelled():
        raise ClientLeft
    # Cancelled by something else than the client leaving: a refusal it can retry.
    raise Unavailable("The handshake was interrupted; try again shortly.")


async def _check(ws: WebSocket, s: Services, address: str) -> tuple[Connection, int] | str | None:
    """The admitted connection and expiry; a cap's message; or None: not authenticated."""
    found = await _authenticate(ws, s)
    if found is None:
        return None
    who, expires_at = found
    realtime = s.realtime
    limit = s.settings.max_connections_per_user
    if limit and await _open_connections(realtime, who) >= limit:
        return "Too many open connections for this user."
    if not s.guard.sockets.acquire(address, s.guard.limits.max_sockets_per_address):
        s.guard.refused(ADDRESS_SOCKETS)
        return "Too many open connections from this address."
    conn = Connection(
        who.actor.org_pk,
        who.actor.pk,
        who.kind,
        realtime.limits,
        context=who,
        unread_batches=protocol.SUBPROTOCOL_V2 in ws.scope.get("subprotocols", ()),
    )
    try:
        # Before accept: the user's unread counts are read first (see Hub.register).
        await realtime.hub.register(conn)
    except BaseException:
        s.guard.sockets.release(address)
        raise
    return conn, expires_at


async def _deny(ws: WebSocket, error: AppError) -> None:
    """Refuses the handshake with the error's HTTP status and JSON, as REST answers it."""
    await ws.send_denial_response(error_response(error))


async def _serve(ws: WebSocket, s: Services, conn: Connection, expires_at: int) -> None:
    realtime = s.realtime
    try:
        await ws.accept(subprotocol=protocol.SUBPROTOCOL_V2 if conn.unread_batches else None)
    except BaseException:
        await realtime.hub.unregister(conn)
        raise
    s.metrics.ws_connections.inc()
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, expires_at - time.time()),
        conn.close,
        CLOSE_SESSION_EXPIRED,
        "The session has expired; sign in again.",
    )
    socket = _Socket(ws, conn)
    # This task reads the socket from here on (an idle socket holds no task of its own),
    # and is named as the reader was when it had a task apart.
    reader = asyncio.current_task()
    if reader is not None:
        reader.set_name("ws-reader")
    try:
        await _reader(ws, conn, s, socket)
    except Exception:
        log.exception("A socket's reader failed unexpectedly.")
    finally:
        expiry.cancel()
        conn.close(CLOSE_NORMAL)  # (when nothing closed it before)
        # The writer flushes what was queued before the close and sends the close frame;
        # a writer stuck on a client that stopped reading is given up on after a grace.
        await socket.finish(CLOSE_GRACE_SECONDS)
        await realtime.hub.unregister(conn)
        s.metrics.ws_connections.dec()
        s.metrics.ws_closed.labels(str(conn.close_code)).inc()


async def _refuse_unavailable(ws: WebSocket) -> None:
    # Not the client's fault: a 503 says "try again", where a 403 would say "bad token".
    log.warning("The database is unavailable; a socket handshake is refused with 503.")
    await _deny(ws, Unavailable("A backing service is unavailable; try again shortly."))


async def _open_connections(realtime: Realtime, who: Principal) -> int:
    """The user's open sockets on every process; 0 (no limit) while presence is down,
    because refusing everybody during a Redis outage would be worse than the limit."""
    try:
        return await realtime.presence.count(who.key)
    except Exception:
        log.warning("Presence is unavailable; the connection limit is not enforced meanwhile.")
        return 0


class _Socket:
    """The edge's side of one open connection: how its frames leave, and waking its reader.

    Under our uvicorn protocol (server/edge/direct.py) the scope offers DIRECT: frames are
    then written straight to the transport, and a writer task exists only while frames
    wait for a paused transport, or to close the socket. Without it (another server), every
    frame is queued and sent by such a writer through ASGI."""

    __slots__ = ("conn", "deadline", "writer", "ws")

    def __init__(self, ws: WebSocket, conn: Connection) -> None:
        self.ws, self.conn = ws, conn
        self.writer: asyncio.Task[None] | None = None
        self.deadline: asyncio.Timeout | None = None  # what the reader waits under, if any
        conn.direct = (ws.scope.get("extensions") or {}).get(DIRECT)
        conn.wake = self.wake
        if conn.queued or conn.close_code is not None:  # queued before accept
            self.wake()

    def wake(self) -> None:
        """Called by the connection when a frame is queued or when it closes."""
        conn = self.conn
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(_writer(self.ws, conn), name="ws-writer")
        deadline = self.deadline
        if conn.close_code is not None and deadline is not None and not deadline.expired():
            # The reader stops: at once if it waits for a frame; an op in flight (a send,
            # say) finishes even though the socket is gone, as on shutdown, within a grace:
            # the client resumes and finds it, or retries with its client_id.
            grace = IN_FLIGHT_GRACE_SECONDS if conn.busy else 0.0
            deadline.reschedule(asyncio.get_running_loop().time() + grace)

    async def finish(self, grace: float) -> None:
        """Once closed: lets the writer flush and close the socket within `grace`."""
        self.conn.direct = self.conn.wake = None
        writer = self.writer
        if writer is None:
            return
        if not writer.done():
            await asyncio.wait({writer}, timeout=grace)
            writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _writer(ws: WebSocket, conn: Connection) -> None:
    """Sends the queued frames in order, each waiting for the transport to take it; once
    the connection is closed and nothing is left, closes the socket. Ends when the queue
    is empty: the connection wakes a new one for the next frame it queues."""
    try:
        while (frame := conn.first_queued()) is not None:
            await ws.send_text(frame)
            conn.sent_first()
        if conn.close_code is not None and conn.close_code != CLOSE_CLIENT_GONE:
            await ws.close(conn.close_code, conn.close_reason[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        conn.close(CLOSE_CLIENT_GONE)


async def _reader(ws: WebSocket, conn: Connection, s: Services, socket: _Socket) -> None:
    """Reads and answers frames until the connection is closed, by the client or from
    elsewhere (`_Socket.wake` ends the wait). Protocol 1 carries out one op at a time and
    answers in order; protocol 2 keeps several in flight (`_Pipeline`)."""
    pipeline = _Pipeline(conn, s) if conn.unread_batches else None
    try:
        await _read_frames(ws, conn, s, socket, pipeline)
    finally:
        if pipeline is not None:
            await pipeline.finish(IN_FLIGHT_GRACE_SECONDS)


async def _read_frames(
    ws: WebSocket, conn: Connection, s: Services, socket: _Socket, pipeline: _Pipeline | None
) -> None:
    while conn.close_code is None:
        try:
            async with asyncio.timeout(conn.limits.idle_timeout_seconds) as socket.deadline:
                message = await ws.receive()
        except TimeoutError:
            conn.close(CLOSE_IDLE, "No frame within the idle timeout.")  # unless closed
            return
        finally:
            socket.deadline = None
        if message["type"] == "websocket.disconnect":
            conn.close(CLOSE_CLIENT_GONE)
            return
        text = message.get("text")
        if text is None:
            conn.send(_error(None, InvalidInput("Frames must be JSON text, not binary.")))
            continue
        if (
            len(text) > conn.limits.max_frame_bytes
            or len(text.encode()) > conn.limits.max_frame_bytes
        ):
            conn.close(CLOSE_TOO_BIG, f"The frame is over {MAX_FRAME_BYTES // 1024} KiB.")
            return
        if pipeline is not None:
            parsed = _parse(text, conn)
            if parsed is not None:
                await pipeline.start(*parsed)
            continue
        conn.busy = True
        try:
            async with asyncio.timeout(None) as socket.deadline:
                await _handle(text, conn, s)
        except TimeoutError:
            return  # closed meanwhile, and the op went over its grace
        finally:
            socket.deadline = None
            conn.busy = False


async def _handle(text: str, conn: Connection, s: Services) -> None:
    parsed = _parse(text, conn)
    if parsed is not None:
        await _run(*parsed, conn, s)


def _parse(text: str, conn: Connection) -> tuple[ClientFrame, Any] | None:
    """The frame and its ref; None once an error frame has answered it."""
    ref: Any = None
    try:
        raw = orjson.loads(text)
        if not isinstance(raw, dict):
            raise InvalidInput("A frame must be a JSON object with an op.")
        ref = protocol.echoable_ref(raw.get("ref"))
        try:
            return protocol.parse_client_frame(raw), ref
        except ValidationError as error:
            raise InvalidInput(describe_validation(error, whole="frame")) from None
    except orjson.JSONDecodeError:
        conn.send(_error(None, InvalidInput("The frame is not valid JSON.")))
    except AppError as error:
        conn.send(_error(ref, error))
    return None


async def _run(frame: ClientFrame, ref: Any, conn: Connection, s: Services) -> None:
    """Carries out one op and sends its answer: its ack, or an error frame."""
    try:
        conn.send(await _apply(frame, conn, s))
    except AppError as error:
        conn.send(_error(ref, error))
    except UNAVAILABLE_ERRORS:
        conn.send(_error(ref, Unavailable("A backing service is unavailable; try again shortly.")))
    except Exception:
        log.exception("An op failed unexpectedly.")
        conn.send(_error(ref, AppError("The server failed to carry out this op.")))
        conn.close(CLOSE_INTERNAL_ERROR, "Internal error.")


# --- protocol 2: several ops in flight ----------------------------------------------------

# Ops of one socket carried out at once, at most; the reader waits for a slot beyond.
MAX_OPS_IN_FLIGHT = 16


def _lane(frame: ClientFrame) -> object | None:
    """Ops of one lane run one after another, in the order they came: sends and reads of a
    thread, and (all together) a socket's subscribes and unsubscribes. None: at once."""
    if isinstance(frame, Send | Read):
        return ("thread", frame.thread)
    if isinstance(frame, Delete):
        return ("message", frame.message)
    if isinstance(frame, Ping):
        return None
    return "subscriptions"


class _Pipeline:
    """A protocol 2 socket's ops in flight: each runs as soon as its lane is free, so a slow
    op (a resume of many candidates, say) holds back neither the pings nor the sends of
    other threads. Answers may then come in another order than the frames: the client
    matches them by `ref`. The reader itself is never busy: once the socket closes it stops
    at once, and `finish` gives the ops in flight their grace."""

    __slots__ = ("conn", "lanes", "running", "s", "slots")

    def __init__(self, conn: Connection, s: Services) -> None:
        self.conn, self.s = conn, s
        self.lanes: dict[object, asyncio.Task[None]] = {}
        self.running: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_OPS_IN_FLIGHT)

    async def start(self, frame: ClientFrame, ref: Any) -> None:
        if isinstance(frame, Ping):
            self.conn.send(protocol.pong(frame.ref))
            return
        await self.slots.acquire()
        lane = _lane(frame)
        before = self.lanes.get(lane)
        task = asyncio.create_task(self._after(before, frame, ref), name="ws-op")
        self.lanes[lane] = task
        self.running.add(task)
        task.add_done_callback(lambda done: self._done(lane, done))

    async def _after(self, before: asyncio.Task[None] | None, frame: ClientFrame, ref: Any) -> None:
        if before is not None:
            await asyncio.wait({before})  # its outcome is its own answer's business
        await _run(frame, ref, self.conn, self.s)

    def _done(self, lane: object, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if self.lanes.get(lane) is task:
            del self.lanes[lane]
        self.slots.release()

    async def finish(self, grace: float) -> None:
        """Once the socket is done: ops in flight finish within `grace` (the client resumes
        and finds what they did, or retries with its client_id), the rest are cancelled."""
        if self.running:
            await asyncio.wait(set(self.running), timeout=grace)
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


async def _apply(frame: ClientFrame, conn: Connection, s: Services) -> str:
    who: Principal = conn.context
    if isinstance(frame, Ping):
        return protocol.pong(frame.ref)
    if isinstance(frame, Subscribe):
        seen = await _seen_candidates(s, who, [frame.candidate])
        access = rules.require_candidate(who.actor, seen.get(frame.candidate))
        rule = thread_rule(who.actor, access)
        result = await s.realtime.hub.subscribe(conn, access.pk, frame.candidate, frame.after, rule)
        return protocol.ack_subscribe(frame.ref, frame.candidate, result.seq, result.reset)
    if isinstance(frame, SubscribeBatch):
        return await _subscribe_batch(frame, conn, s)
    if isinstance(frame, Unsubscribe):
        async with s.db.read() as session:
            candidate = await facts.candidate_row(session, who.actor.org_pk, frame.candidate)
        if candidate is not None:
            await s.realtime.hub.unsubscribe(conn, candidate.pk)
        return protocol.ack_unsubscribe(frame.ref, frame.candidate)
    if isinstance(frame, Send):
        s.send_limiter.take(who.key)
        message, created = await s.messaging.send(who, frame.thread, frame.body, frame.client_id)
        if created:
            s.metrics.messages_sent.labels("ws").inc()
        return protocol.ack_send(frame.ref, message)
    if isinstance(frame, Read):
        unread = await s.messaging.mark_read(who, frame.thread, frame.message_id)
        return protocol.ack_read(frame.ref, unread)
    assert isinstance(frame, Delete)
    await s.messaging.delete(who, frame.message)
    s.metrics.messages_deleted.labels("ws").inc()
    return protocol.ack_delete(frame.ref, frame.message)


async def _seen_candidates(
    s: Services, who: Principal, candidate_ids: list[str]
) -> dict[str, CandidateAccess]:
    async with s.db.read() as session:
        return await queries.seen_candidates(session, who.actor, candidate_ids)


NO_SUCH_CANDIDATE = "No such candidate."  # as the single form's error says it (rules)


async def _subscribe_batch(frame: SubscribeBatch, conn: Connection, s: Services) -> str:
    """Every candidate of the batch at once: their access in one statement, and the hub's
    reads for all of them together. A candidate the user does not see gets its own error
    in the ack; the others are followed all the same."""
    who: Principal = conn.context
    seen = await _seen_candidates(s, who, [item.candidate for item in frame.candidates])
    requests = [
        SubscribeRequest(access.pk, item.candidate, item.after, thread_rule(who.actor, access))
        for item in frame.candidates
        if (access := seen.get(item.candidate)) is not None
    ]
    followed = await s.realtime.hub.subscribe_many(conn, requests)
    results = {r.candidate_id: result for r, result in zip(requests, followed, strict=True)}
    return protocol.ack_subscribe_batch(
        frame.ref,
        [
            protocol.subscribed(item.candidate, result.seq, result.reset)
            if (result := results.get(item.candidate)) is not None
            else protocol.not_subscribed(item.candidate, NotFound.code, NO_SUCH_CANDIDATE)
            for item in frame.candidates
        ],
    )


routes = [WebSocketRoute("/ws", websocket_endpoint)]
