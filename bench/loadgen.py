"""The load generator: WebSocket clients in separate processes, send→deliver latency.

Two roles, so that receiving can be spread over several processes (one Python process
cannot parse the frames of a thousand busy sockets):

  receive   connect N sockets, subscribe, record the latency of every message; on stdin
            EOF print one JSON line: {"step": [latencies in µs, …], …}
  publish   send at each rate of --rates for --step-seconds, stamping every body with
            "<time.time_ns()> <step> <n>"; print one JSON line per step

Both share the machine's clock. Protocols ("systems"):
  am    this server: subscribe to a candidate, publish with the `send` op
  bare  the bare relay in bench/peers/bare_ws.py: every text frame goes to every other client
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict

import orjson
import websockets


def _parse_am(frame: str | bytes) -> tuple[int, int] | None:
    data = orjson.loads(frame)
    if data.get("type") != "message.created":
        return None
    return _parse_body(data["message"]["body"] or "")


def _parse_body(text: str) -> tuple[int, int] | None:
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    return int(parts[0]), int(parts[1])


def _parse_bare(frame: str | bytes) -> tuple[int, int] | None:
    return _parse_body(frame if isinstance(frame, str) else frame.decode())


async def connect(url: str, token: str | None) -> websockets.ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await websockets.connect(
        url,
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=60,
        ping_interval=None,
    )


async def _receive_one(
    connection: websockets.ClientConnection, system: str, record: dict[int, list[int]]
) -> None:
    parse = _parse_am if system == "am" else _parse_bare
    try:
        async for frame in connection:
            stamp = parse(frame)
            if stamp is not None:
                record[stamp[1]].append((time.time_ns() - stamp[0]) // 1000)
    except websockets.ConnectionClosed:
        return


async def receive(args: argparse.Namespace) -> None:
    tokens: list[str | None] = json.loads(args.tokens) if args.tokens else [None]
    record: dict[int, list[int]] = defaultdict(list)
    connections, tasks = [], []
    for index in range(args.count):
        connection = await connect(args.url, tokens[index % len(tokens)])
        if args.system == "am":
            await connection.send(json.dumps({"op": "subscribe", "candidate": args.candidate}))
            await connection.recv()  # the ack
        connections.append(connection)
        tasks.append(asyncio.create_task(_receive_one(connection, args.system, record)))
    print(json.dumps({"connected": len(connections)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    for task in tasks:
        task.cancel()
    print(json.dumps({str(step): values for step, values in record.items()}), flush=True)
    for connection in connections:
        await connection.close()


async def _discard(connection: websockets.ClientConnection) -> None:
    """Reads the publisher's acks, so that it never counts as a slow client itself."""
    try:
        async for _ in connection:
            pass
    except websockets.ConnectionClosed:
        return


async def publish(args: argparse.Namespace) -> None:
    connection = await connect(args.url, args.tokens or None)
    reader = asyncio.create_task(_discard(connection))
    for step, rate in enumerate(float(r) for r in args.rates.split(",")):
        interval, count = 1.0 / rate, max(1, int(rate * args.step_seconds))
        started = time.perf_counter()
        for n in range(count):
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = f"{time.time_ns()} {step} {n}"
            if args.system == "am":
                frame = {"op": "send", "thread": args.thread, "body": body}
                await connection.send(json.dumps(frame))
            else:
                await connection.send(body)
        elapsed = time.perf_counter() - started
        print(
            json.dumps({"step": step, "rate": rate, "sent": count, "seconds": elapsed}), flush=True
        )
        await asyncio.sleep(args.drain_seconds)
    reader.cancel()
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["receive", "publish"])
    parser.add_argument("--system", choices=["am", "bare"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=100, help="receive: sockets to open")
    parser.add_argument("--tokens", default="", help="receive: JSON list; publish: a token")
    parser.add_argument("--candidate", default="c1")
    parser.add_argument("--thread", type=int, default=0)
    parser.add_argument("--rates", default="5,10,20,40,80")
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--drain-seconds", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(receive(args) if args.role == "receive" else publish(args))


if __name__ == "__main__":
    main()
