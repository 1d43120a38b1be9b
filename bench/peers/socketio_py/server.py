"""python-socketio relay with rooms: an AsyncServer served by uvicorn (ASGI).

Events (Socket.IO v5 over Engine.IO v4, default namespace):
    "join"     room name              enter the room; acknowledged with True when asked
    "publish"  {"room": r, "body": b}  emit "message" b to every client in room r

With --redis-url the server uses AsyncRedisManager, its production configuration for more
than one process: every emit goes through Redis pub/sub and each process delivers to its
own members (so N processes on different ports share rooms). Without it, rooms live in this
process only.
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn


def build(redis_url: str | None) -> socketio.ASGIApp:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=manager,
        cors_allowed_origins="*",
        logger=False,
        engineio_logger=False,
        transports=["websocket"],
    )

    @sio.event
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.event
    async def publish(sid: str, data: dict[str, Any]) -> None:
        await sio.emit("message", data["body"], room=data["room"])

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    uvicorn.run(
        build(args.redis_url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
