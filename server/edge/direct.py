"""uvicorn's sans-I/O WebSocket protocol, with frames written straight to the transport.

Through ASGI, every frame a socket sends is encoded and framed again for that socket, and
travels through an awaited `send`. An event goes to every subscriber of its candidate as
the same bytes, though: server frames are unmasked, and permessage-deflate is off. So once
the handshake is answered, this protocol offers the app the scope extension DIRECT: a
callable that writes one text frame at once (its bytes built once per frame object, for
every recipient), or returns False when it cannot (the transport is paused, or the socket
no longer open). The app then queues the frame and sends it the ASGI way, which waits for
the transport (server/edge/ws.py). Frames are written whole, so they never interleave with
the protocol's own pings, pongs and close frames.

Thousands of sockets sit idle, each holding its protocol: this one also keeps less per
socket than uvicorn's. Its receive queue and writable flag are slotted objects with no
preallocated deques (an asyncio.Queue and an asyncio.Event cost about 4 KiB together), and
the handshake's response is dropped once written.

It extends uvicorn through the internals pinned in pyproject.toml (`conn`, `transport`,
`queue`, `writable`, `scope`, `response`, `handle_connect`, `send`);
tests/test_direct_writes.py checks what it relies on.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State

DIRECT = "agency-messaging.direct"  # the ASGI scope extension: Callable[[str], bool]

_FIN_TEXT = 0x80 | Opcode.TEXT


def text_frame(text: str) -> bytes:
    """`text` as one final, unmasked WebSocket text frame, as a server sends it."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN_TEXT, length)
    elif length < 65536:
        header = struct.pack("!BBH", _FIN_TEXT, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
    return header + payload


class FrameCache:
    """The bytes of the last frame encoded: the hub hands one frame object to every
    subscriber in turn, so each event is encoded once. Kept as one tuple, which is
    replaced whole (a server run in several threads never sees half an update)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[str, bytes] = ("", text_frame(""))

    def encode(self, text: str) -> bytes:
        last = self._last
        if last[0] is text:
            return last[1]
        data = text_frame(text)
        self._last = (text, data)
        return data


frames = FrameCache()


class Inbox:
    """What uvicorn's protocol uses of its receive queue: `put_nowait`, `get` and `empty`.
    Waiting getters are woken by every put and look again; one that is cancelled leaves
    the items where they are."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        _wake_all(self._waiters)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            await _wait(self._waiters)
        return self._items.pop(0)


class Flag:
    """What uvicorn's protocol uses of its `writable` event: `set`, `clear`, `is_set` and
    `wait`."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        _wake_all(self._waiters)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        while not self._set:
            await _wait(self._waiters)
        return True


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if waiter in waiters:  # cancelled before it was woken
            waiters.remove(waiter)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """The protocol to hand to uvicorn (`ws=`): uvicorn's, offering DIRECT to the app."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = self.__dict__.get("scope")  # there only when the app is asked to answer
        # An extension such as permessage-deflate changes each socket's bytes.
        if scope is not None and not self.conn.extensions:
            scope["extensions"][DIRECT] = self.write_text

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            del self.response  # written; nothing reads it again

    def write_text(self, text: str) -> bool:
        """Writes `text` as a text frame now; False when it must wait (paused transport)
        or cannot be sent this way (the socket is not open, or closing)."""
        if (
            self.conn.state is not State.OPEN
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frames.encode(text))
        return True
