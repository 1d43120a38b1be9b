"""The connection guard: what a client may hold before its request has been read.

A server on the open internet must answer every connection in bounded time and memory,
whatever the client sends or fails to send. uvicorn's httptools protocol puts no bound on
the size of a request head or on the time a client takes to send it, and its WebSocket
layer never writes the 431 that the websockets library prepares for a header it refuses
(the socket just hangs). This module closes those gaps:

- a request head (request line and headers) must arrive within `handshake_timeout_seconds`
  of its first byte (or of the connection, for a client that sends nothing): else 408;
- a header line over `max_header_line_bytes`, a head over `max_head_bytes` or more than
  `max_header_fields` fields is answered 431 at once, complete or not;
- at most `max_pending_handshakes` connections per process may be in that state; at the
  cap, the one that has waited longest is dropped (408) to make room, so a flood of slow
  clients (slowloris) cannot lock out clients that send their request at once;
- per client address, at most `max_handshakes_per_address` handshakes in progress (429)
  and `max_sockets_per_address` open WebSockets (checked by the endpoint, close 4029);
  the address is the peer's, or what a proxy in `trusted_proxies` says in X-Forwarded-For.

The WebSocket endpoint bounds the rest of its handshake (authentication, first unread
counts) by the same timeout and counts it as a handshake of the client's address.

It extends uvicorn's `HttpToolsProtocol` through its parser callbacks (`on_url`,
`on_header`, ...) and `handle_websocket_upgrade`: uvicorn is pinned to the version these
were written against, and tests/test_connection_guard.py drives each bound through raw
sockets on a real server process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.domain.errors import AppError, RateLimited
from server.settings import GuardLimits, IPNetwork

log = logging.getLogger("agency_messaging.guard")

# Why a connection was refused or dropped: the label of am_connections_refused_total.
HEADER_TIMEOUT = "header_timeout"
HEADERS_TOO_LARGE = "headers_too_large"
PENDING_CAP = "pending_cap"
ADDRESS_HANDSHAKES = "address_handshakes"
ADDRESS_SOCKETS = "address_sockets"
HANDSHAKE_TIMEOUT = "handshake_timeout"

SUMMARY_EVERY_SECONDS = 60.0
LINGER_SECONDS = 2.0


class AddressCounts:
    """How many of something each client address holds; empty addresses are forgotten."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def get(self, address: str) -> int:
        return self._counts.get(address, 0)

    def acquire(self, address: str, limit: int) -> bool:
        held = self._counts.get(address, 0)
        if limit and held >= limit:
            return False
        self._counts[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self._counts.get(address, 0) - 1
        if held > 0:
            self._counts[address] = held
        else:
            self._counts.pop(address, None)


class ConnectionGuard:
    """The per-process state behind the bounds: pending request heads, oldest first, and
    per-address counts of handshakes and sockets."""

    def __init__(
        self,
        limits: GuardLimits | None = None,
        *,
        on_refused: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or GuardLimits()
        self.handshakes = AddressCounts()
        self.sockets = AddressCounts()
        self._pending: OrderedDict[Any, None] = OrderedDict()
        self._trusted: dict[str, bool] = {}
        self._on_refused = on_refused
        self._clock = clock
        self._unreported: Counter[str] = Counter()
        self._reported_at = clock()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_trusted_proxy(self, host: str | None) -> bool:
        if host is None or not self.limits.trusted_proxies:
            return False
        trusted = self._trusted.get(host)
        if trusted is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                trusted = False
            else:
                trusted = any(address in net for net in self.limits.trusted_proxies)
            if len(self._trusted) < 4096:  # peers are few; a bound all the same
                self._trusted[host] = trusted
        return trusted

    # --- request heads in progress ------------------------------------------------------

    def begin_head(self, protocol: Any, address: str | None) -> bool:
        """Admits a connection whose request head is about to be read; False if its
        address is over its cap. At the global cap, the longest waiting head is dropped."""
        if address is not None and not self.handshakes.acquire(
            address, self.limits.max_handshakes_per_address
        ):
            self.refused(ADDRESS_HANDSHAKES)
            return False
        cap = self.limits.max_pending_handshakes
        while cap and len(self._pending) >= cap:
            oldest, _ = self._pending.popitem(last=False)
            self.refused(PENDING_CAP)
            oldest.drop_pending()
        self._pending[protocol] = None
        return True

    def end_head(self, protocol: Any, address: str | None) -> None:
        if self._pending.pop(protocol, False) is None and address is not None:
            self.handshakes.release(address)

    def forget_head(self, address: str | None) -> None:
        """For a head dropped by begin_head's eviction (no longer in the pending list)."""
        if address is not None:
            self.handshakes.release(address)

    # --- accounting -----------------------------------------------------------------------

    def refused(self, reason: str) -> None:
        """Counts a refusal; the log gets one summary a minute, not a line per client."""
        if self._on_refused is not None:
            self._on_refused(reason)
        self._unreported[reason] += 1
        now = self._clock()
        if now - self._reported_at >= SUMMARY_EVERY_SECONDS:
            self._report(now)

    def _report(self, now: float) -> None:
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self._unreported.items()))
        log.warning(
            "Connections refused or dropped in the last %.0f s: %s.",
            now - self._reported_at,
            counts,
        )
        self._unreported.clear()
        self._reported_at = now


class RequestTimeout(AppError):
    status = 408
    code = "timeout"


class HeadersTooLarge(AppError):
    status = 431
    code = "too_large"


TOO_MANY_HANDSHAKES = "Too many connections in progress from this address; try again shortly."
_PHRASES = {
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
}


def _status_response(error: AppError) -> bytes:
    """The whole HTTP answer to a connection refused before the app saw it: the error JSON
    that every other answer carries, then the connection is closed."""
    body = orjson.dumps(error.to_json())
    return (
        f"HTTP/1.1 {error.status} {_PHRASES[error.status]}\r\n"
        f"content-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


TIMED_OUT = _status_response(
    RequestTimeout("The request was not received in time; the connection is closed.")
)
TOO_LARGE = _status_response(
    HeadersTooLarge("The request's header fields are too large; the connection is closed.")
)
TOO_MANY = _status_response(RateLimited(TOO_MANY_HANDSHAKES, 1.0))


def scan_head(run: int, data: bytes, max_line: int) -> tuple[bool, int]:
    """Scans a chunk of a request head: (no line over `max_line`, the length of the line
    still unfinished at its end). `run` is that length before the chunk. Scanning stops at
    the empty line that ends the head, so a body in the same chunk is not taken for it."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end == -1:
            run += len(data) - start
            return run <= max_line, run
        length = run + end - start
        if length > max_line:
            return False, length
        if length <= 1:  # "\r\n" alone: the end of the head
            return True, 0
        run, start = 0, end + 1


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard's bounds on every request head."""

    guard: ConnectionGuard  # set on the subclass that `guarded_protocol` makes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        # Behind a trusted proxy, the peer is the proxy: per-address caps wait for the
        # client's own address (X-Forwarded-For), which the endpoint sees.
        self._address = None if self.guard.is_trusted_proxy(peer) else (peer or "unknown")
        self._refused = False
        self._in_head = False
        self._head_raw = 0
        self._line_run = 0
        self._fields = 0
        self._timer: asyncio.TimerHandle | None = None
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        self._cancel_timer()
        super().connection_lost(exc)

    # --- the head: started, bounded, ended -----------------------------------------------

    def _begin_head(self) -> None:
        if self._in_head or self._refused:
            return
        self._in_head, self._head_raw, self._line_run, self._fields = True, 0, 0, 0
        if not self.guard.begin_head(self, self._address):
            self._in_head = False
            self._refuse(TOO_MANY)
            return
        self._start_timer()

    def _end_head(self) -> None:
        if self._in_head:
            self._in_head = False
            self.guard.end_head(self, self._address)

    def _start_timer(self) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(
            self.guard.limits.handshake_timeout_seconds, self._timed_out
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._in_head:
            self.guard.refused(HEADER_TIMEOUT)
            self._refuse(TIMED_OUT)
        elif not self._refused:  # the body did not arrive in time: nothing more to say
            self.guard.refused(HEADER_TIMEOUT)
            self._refused = True
            self.transport.close()

    def drop_pending(self) -> None:
        """Called by the guard when this head is evicted to make room for a newer one."""
        self._in_head = False
        self.guard.forget_head(self._address)
        self._refuse(TIMED_OUT)

    def _refuse(self, response: bytes) -> None:
        if self._refused:
            return
        self._refused = True
        self._end_head()
        self._cancel_timer()
        if self.transport.is_closing():
            return
        self.transport.write(response)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with unread bytes in the socket would send a reset that can destroy the
        # answer before the client reads it: end our side, discard what still comes, and
        # close when the client does, or after a short linger.
        self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _too_large(self) -> None:
        self.guard.refused(HEADERS_TOO_LARGE)
        self._refuse(TOO_LARGE)

    # --- uvicorn's entry points -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head and not self._head_is_within_limits(data):
            self._too_large()
            return
        super().data_received(data)
        if self._in_head and not self._refused:
            # Still in the head after this chunk: what httptools buffers counts too. (A
            # chunk may also end the previous request: an upper bound, never an underrun.)
            self._head_raw += len(data)
            if self._head_raw > self.guard.limits.max_head_bytes:
                self._too_large()

    def _head_is_within_limits(self, data: bytes) -> bool:
        within, self._line_run = scan_head(
            self._line_run, data, self.guard.limits.max_header_line_bytes
        )
        return within

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._begin_head()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        super().on_url(url)
        if len(self.url) > self.guard.limits.max_header_line_bytes:
            self._too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._fields += 1
        limits = self.guard.limits
        if (
            self._fields > limits.max_header_fields
            or len(name) + len(value) + 2 > limits.max_header_line_bytes
        ):
            self._too_large()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.guard.limits.max_head_bytes:
            self._too_large()
            return
        self._end_head()
        # The body must follow within the same time; an upgrade hands the socket over.
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel_timer()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._refused:
            return
        self._cancel_timer()  # the endpoint bounds the rest of the handshake
        super().handle_websocket_upgrade()
        _flush_refused_handshake(self.transport)


def _flush_refused_handshake(transport: asyncio.Transport) -> None:
    """The websockets parser may refuse a request that httptools accepted; uvicorn then
    never writes the answer it prepared. Write it and close, instead of hanging.

    This reads uvicorn's sans-I/O WebSocket protocol (`conn`) and the websockets library's
    `ServerProtocol` (`handshake_exc`, `data_to_send()`): both are pinned in pyproject.toml,
    and tests/unit/test_pinned_internals.py checks what this relies on."""
    connection = getattr(transport.get_protocol(), "conn", None)
    if connection is None or getattr(connection, "handshake_exc", None) is None:
        return
    if not transport.is_closing():
        transport.write(b"".join(connection.data_to_send()))
        transport.close()


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to hand to uvicorn (`http=`), bound to this process's guard."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})


def networks_text(networks: Iterable[IPNetwork]) -> list[str]:
    return [str(network) for network in networks]
