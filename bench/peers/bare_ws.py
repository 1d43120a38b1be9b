"""The limit: a bare `websockets` relay with rooms, one process.

It does nothing else (no auth, no storage, no JSON, no cross-process broker), so whatever a
real messaging server delivers is measured against what Python and this machine can relay
at all. Protocol, text frames only:

    "join <room>"     join a room (a client may join several); answered with "joined <room>"
    "<room> <body>"   relay <body>, as is, to every client in <room> (the sender included
                      if it joined the room)

Room names contain no spaces. Anything else is ignored. It runs on uvloop when that is
installed, as uvicorn does (our server and the other peers).
"""

from __future__ import annotations

import argparse
import asyncio

import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


async def handler(connection: ServerConnection) -> None:
    joined: list[str] = []
    try:
        async for frame in connection:
            if not isinstance(frame, str):
                continue
            room, _, body = frame.partition(" ")
            if room == "join":
                rooms.setdefault(body, set()).add(connection)
                joined.append(body)
                await connection.send(f"joined {body}")
            else:
                members = rooms.get(room)
                if members:
                    broadcast(members, body)
    except websockets.ConnectionClosed:
        pass
    finally:
        for room in joined:
            members = rooms.get(room)
            if members is not None:
                members.discard(connection)
                if not members:
                    del rooms[room]


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, max_size=64 * 1024, compression=None, backlog=1024
    ):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default=None, help="ignored: the relay is one process")
    port = parser.parse_args().port
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(port))
    else:
        uvloop.run(main(port))
