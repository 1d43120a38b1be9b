"""The load generator: WebSocket clients in separate processes, send→deliver latency.

One asyncio client drives every system; only the wire protocol changes (--system). Two
roles, so that receiving can be spread over several processes (one Python process cannot
parse the frames of thousands of busy sockets):

  receive   open --count sockets (socket i connects to urls[i % len(urls)] and joins
            rooms[i % len(rooms)], with tokens[i % len(tokens)] for am), --concurrency at a
            time; print {"connected": n}; record the latency of every message; on stdin EOF
            print {"duplicates": {step: count}} and then, last, {step: [latencies in µs]}
  publish   open --connections sockets (round-robin over --urls); at each rate of --rates
            (messages per second in all), for --step-seconds, send messages to the targets
            of --targets in turn, over the connections in turn; stamp every body
            "<time.time_ns()> <step> <n>" (n counts from --n-offset within a step); print one
            JSON line per step: {"step", "rate", "sent", "seconds"}, then wait --drain-seconds

A latency is counted once per socket and message: a message that a socket receives again
(same step and n) is counted in "duplicates" instead, so several publisher processes in one
run need disjoint --n-offset ranges. Both roles share the machine's clock, and run on uvloop
when it is installed. The "connected" line also gives the seconds that connecting took.

Protocols (--system):
  am        this server: {"op":"subscribe","candidate":room} (waits for the ack), publish
            {"op":"send","thread":target,"body":…}; receives "message.created" frames, ignores
            the rest (acks, "unread", …). Rooms are candidate ids, targets thread ids.
  bare      bench/peers/bare_ws.py: "join <room>" (answered "joined <room>"), publish
            "<room> <body>"; receives the body as is.
  sio       Socket.IO v5 over Engine.IO v4 on raw websockets, for python-socketio and Node
            Socket.IO: open packet "0{…}", connect "40" → "40{…}", join with an ack
            420["join",room] → 430[…], publish 42["publish",{"room":…,"body":…}], receive
            42["message",body]; pings "2" are answered "3".
  channels  the Django Channels peer: {"join":room} (answered {"joined":room}), publish
            {"room":…,"body":…}; receives the body as is.

Without --urls/--rooms/--targets, --url, --candidate and --thread give the single URL, room
and target (the room is also the target of bare, sio and channels then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import websockets

Connection = websockets.ClientConnection

# --- protocols ----------------------------------------------------------------------------


def _parse_body(text: str) -> tuple[int, int, int] | None:
    """(time_ns, step, n) of a body "<time_ns> <step> <n>", or None."""
    parts = text.split(" ", 3)
    if len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def _text(frame: str | bytes) -> str:
    return frame if isinstance(frame, str) else frame.decode()


async def _recv_until(connection: Connection, done: Callable[[str], bool]) -> str:
    """Reads frames until one satisfies `done` (answering Engine.IO pings on the way)."""
    while True:
        frame = _text(await connection.recv())
        if done(frame):
            return frame
        if frame == "2":
            await connection.send("3")


class Protocol:
    """A system's wire protocol, as seen by a client."""

    ping: str | None = None  # a frame from the server that must be answered with `pong`
    pong: str = ""

    def url(self, url: str) -> str:
        return url

    async def handshake(self, connection: Connection) -> None:
        """After the WebSocket opens."""

    async def join(self, connection: Connection, room: str) -> None:
        raise NotImplementedError

    def publish_frame(self, target: str, body: str) -> str:
        raise NotImplementedError

    def body_of(self, frame: str | bytes) -> str | None:
        """The body of a delivered message, or None for any other frame."""
        raise NotImplementedError


class Am(Protocol):
    async def join(self, connection: Connection, room: str) -> None:
        await connection.send(json.dumps({"op": "subscribe", "candidate": room, "ref": "join"}))
        frame = await _recv_until(connection, lambda f: '"ref":"join"' in f)
        reply = orjson.loads(frame)
        if reply.get("type") != "ack":
            raise RuntimeError(f"subscribe to {room} failed: {frame}")

    def publish_frame(self, target: str, body: str) -> str:
        return json.dumps({"op": "send", "thread": int(target), "body": body})

    def body_of(self, frame: str | bytes) -> str | None:
        if isinstance(frame, bytes) or '"message.created"' not in frame:
            return None
        data = orjson.loads(frame)
        if data.get("type") != "message.created":
            return None
        return str(data["message"]["body"] or "")


class Bare(Protocol):
    async def join(self, connection: Connection, room: str) -> None:
        await connection.send(f"join {room}")
        await _recv_until(connection, lambda f: f == f"joined {room}")

    def publish_frame(self, target: str, body: str) -> str:
        return f"{target} {body}"

    def body_of(self, frame: str | bytes) -> str | None:
        return _text(frame)


class Channels(Protocol):
    async def join(self, connection: Connection, room: str) -> None:
        await connection.send(json.dumps({"join": room}))
        await _recv_until(connection, lambda f: f.startswith('{"joined"'))

    def publish_frame(self, target: str, body: str) -> str:
        return json.dumps({"room": target, "body": body})

    def body_of(self, frame: str | bytes) -> str | None:
        return _text(frame)


_SIO_MESSAGE = '42["message",'


class SocketIO(Protocol):
    ping, pong = "2", "3"

    def url(self, url: str) -> str:
        if "/socket.io/" in url:
            return url
        return url.rstrip("/") + "/socket.io/?EIO=4&transport=websocket"

    async def handshake(self, connection: Connection) -> None:
        opened = _text(await connection.recv())
        if not opened.startswith("0{"):
            raise RuntimeError(f"expected an Engine.IO open packet, got {opened[:80]!r}")
        await connection.send("40")
        connected = await _recv_until(connection, lambda f: f.startswith(("40", "44")))
        if connected.startswith("44"):
            raise RuntimeError(f"Socket.IO connect refused: {connected[:200]}")

    async def join(self, connection: Connection, room: str) -> None:
        await connection.send("420" + json.dumps(["join", room], separators=(",", ":")))
        await _recv_until(connection, lambda f: f.startswith("430"))

    def publish_frame(self, target: str, body: str) -> str:
        return "42" + json.dumps(["publish", {"room": target, "body": body}], separators=(",", ":"))

    def body_of(self, frame: str | bytes) -> str | None:
        if isinstance(frame, bytes):
            return None
        if frame.startswith(_SIO_MESSAGE):
            payload = frame[len(_SIO_MESSAGE) : -1]
            if len(payload) >= 2 and payload[0] == '"' and "\\" not in payload:
                return payload[1:-1]
        elif not frame.startswith("42"):
            return None
        try:
            data = json.loads(frame[2:])
        except ValueError:
            return None
        if isinstance(data, list) and len(data) >= 2 and data[0] == "message":
            return data[1] if isinstance(data[1], str) else None
        return None


PROTOCOLS: dict[str, Protocol] = {
    "am": Am(),
    "bare": Bare(),
    "sio": SocketIO(),
    "channels": Channels(),
}


# --- connecting ---------------------------------------------------------------------------


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_socket(
    protocol: Protocol, url: str, token: str | None, room: str | None, attempts: int = 3
) -> Connection:
    """A connected (and, given a room, joined) socket; retries a refused or failed open."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for attempt in range(attempts):
        try:
            connection = await websockets.connect(
                protocol.url(url),
                additional_headers=headers,
                max_size=None,
                compression=None,
                open_timeout=60,
                ping_interval=None,
                close_timeout=2,
                proxy=None,  # no proxy lookup: it reads the whole environment per socket
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        await asyncio.wait_for(protocol.handshake(connection), 60)
        if room is not None:
            await asyncio.wait_for(protocol.join(connection, room), 60)
        return connection
    raise AssertionError("unreachable")


async def bounded(jobs: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


def _list(value: str, fallback: list[Any]) -> list[Any]:
    """A JSON list given inline, or as "@path" to a file (thousands of tokens do not fit in
    one command-line argument)."""
    if value.startswith("@"):
        with open(value[1:]) as file:
            value = file.read()
    items = json.loads(value) if value else fallback
    if not isinstance(items, list) or not items:
        raise SystemExit(f"expected a non-empty JSON list, got {value!r}")
    return items


def _urls(args: argparse.Namespace) -> list[str]:
    if not args.urls and not args.url:
        raise SystemExit("give --url or --urls")
    return [str(u) for u in _list(args.urls, [args.url])]


# --- receive ------------------------------------------------------------------------------


class Record:
    """Latencies per step (µs) and duplicate counts per step, over all sockets."""

    def __init__(self) -> None:
        self.latencies: dict[int, list[int]] = defaultdict(list)
        self.duplicates: dict[int, int] = defaultdict(int)


async def _receive_one(connection: Connection, protocol: Protocol, record: Record) -> None:
    body_of, ping, pong = protocol.body_of, protocol.ping, protocol.pong
    latencies, duplicates = record.latencies, record.duplicates
    seen: dict[int, bytearray] = {}  # step → bitmap of the n received by this socket
    try:
        async for frame in connection:
            body = body_of(frame)
            if body is None:
                if ping is not None and frame == ping:
                    await connection.send(pong)
                continue
            now = time.time_ns()
            stamp = _parse_body(body)
            if stamp is None:
                continue
            sent, step, n = stamp
            bits = seen.get(step)
            if bits is None:
                bits = seen[step] = bytearray(128)
            byte, mask = n >> 3, 1 << (n & 7)
            if byte >= len(bits):
                bits.extend(bytes(byte + 128 - len(bits)))
            if bits[byte] & mask:
                duplicates[step] += 1
                continue
            bits[byte] |= mask
            latencies[step].append((now - sent) // 1000)
    except websockets.ConnectionClosed:
        return


async def receive(args: argparse.Namespace) -> None:
    protocol = PROTOCOLS[args.system]
    urls = _urls(args)
    rooms = [str(r) for r in _list(args.rooms, [args.candidate])]
    tokens: list[str | None] = _list(args.tokens, [None])
    record = Record()
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> Connection:
        connection = await open_socket(
            protocol,
            urls[index % len(urls)],
            tokens[index % len(tokens)],
            rooms[index % len(rooms)],
        )
        tasks.append(asyncio.create_task(_receive_one(connection, protocol, record)))
        return connection

    started = time.perf_counter()
    connections: list[Connection] = await bounded(
        [lambda i=i: one(i) for i in range(args.count)], args.concurrency
    )
    print(
        json.dumps(
            {"connected": len(connections), "seconds": round(time.perf_counter() - started, 2)}
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    for task in tasks:
        task.cancel()
    print(json.dumps({"duplicates": {str(k): v for k, v in record.duplicates.items()}}))
    print(json.dumps({str(k): v for k, v in record.latencies.items()}), flush=True)
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


# --- publish ------------------------------------------------------------------------------


async def _discard(connection: Connection, protocol: Protocol) -> None:
    """Reads the publisher's acks (answering pings), so it never counts as a slow client."""
    ping, pong = protocol.ping, protocol.pong
    try:
        async for frame in connection:
            if ping is not None and frame == ping:
                await connection.send(pong)
    except websockets.ConnectionClosed:
        return


async def publish(args: argparse.Namespace) -> None:
    protocol = PROTOCOLS[args.system]
    urls = _urls(args)
    fallback = args.thread if args.system == "am" else args.candidate
    targets = [str(t) for t in _list(args.targets, [fallback])]
    token = args.tokens or None
    connections: list[Connection] = await bounded(
        [
            lambda i=i: open_socket(protocol, urls[i % len(urls)], token, None)
            for i in range(args.connections)
        ],
        args.concurrency,
    )
    readers = [asyncio.create_task(_discard(c, protocol)) for c in connections]
    frame_of = protocol.publish_frame
    total = 0  # over all steps: picks the target and the connection
    for step, rate in enumerate(float(r) for r in args.rates.split(",")):
        interval, count = 1.0 / rate, max(1, int(rate * args.step_seconds))
        started = time.perf_counter()
        for n in range(count):
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = f"{time.time_ns()} {step} {n + args.n_offset}"
            connection = connections[total % len(connections)]
            await connection.send(frame_of(targets[total % len(targets)], body))
            total += 1
        elapsed = time.perf_counter() - started
        print(
            json.dumps({"step": step, "rate": rate, "sent": count, "seconds": elapsed}), flush=True
        )
        await asyncio.sleep(args.drain_seconds)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=["receive", "publish"])
    parser.add_argument("--system", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("--url", default="", help="one server URL (or use --urls)")
    parser.add_argument("--urls", default="", help="JSON list of server URLs, round-robin")
    parser.add_argument("--count", type=int, default=100, help="receive: sockets to open")
    parser.add_argument(
        "--tokens", default="", help="am: receive: JSON list (round-robin); publish: a token"
    )
    parser.add_argument("--rooms", default="", help="receive: JSON list, socket i joins i %% n")
    parser.add_argument("--candidate", default="c1", help="the one room without --rooms")
    parser.add_argument("--targets", default="", help="publish: JSON list, round-robin")
    parser.add_argument("--thread", type=int, default=0, help="am: the one target w/o --targets")
    parser.add_argument("--connections", type=int, default=1, help="publish: sockets")
    parser.add_argument("--concurrency", type=int, default=100, help="sockets opening at once")
    parser.add_argument("--rates", default="5,10,20,40,80", help="messages per second, per step")
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--drain-seconds", type=float, default=1.0)
    parser.add_argument("--n-offset", type=int, default=0, help="publish: first n of each step")
    args = parser.parse_args()
    raise_file_limit()
    run = receive(args) if args.role == "receive" else publish(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run)
    else:
        uvloop.run(run)


if __name__ == "__main__":
    main()
