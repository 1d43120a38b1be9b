"""The limit: a bare `websockets` server that relays every text frame to every other client.

It does nothing else (no auth, no storage, no JSON), so whatever a real messaging server
delivers is measured against what Python and this machine can relay at all.
"""

from __future__ import annotations

import argparse
import asyncio

import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

clients: set[ServerConnection] = set()


async def handler(connection: ServerConnection) -> None:
    clients.add(connection)
    try:
        async for frame in connection:
            if isinstance(frame, str) and frame != "ping":
                broadcast(clients - {connection}, frame)
    except websockets.ConnectionClosed:
        pass
    finally:
        clients.discard(connection)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, max_size=64 * 1024, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
