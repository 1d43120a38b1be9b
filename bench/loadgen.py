"""The load generator: one process, many WebSocket clients, send→deliver latency.

Each published message carries its send time (time.time_ns) in its body; every receiver
records now - sent on arrival. Receivers and the publisher share the machine's clock.

Protocols ("systems"):
  am    this server: subscribe to a candidate, publish with the `send` op
  bare  the bare relay in bench/peers/bare_ws.py: every text frame goes to every other client

Prints one JSON line per rate step on stdout (the orchestrator reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import orjson
import websockets


@dataclass
class Receiver:
    latencies_ns: list[int] = field(default_factory=list)
    seen: int = 0


def _stamp_from_am(frame: str | bytes) -> int | None:
    data = orjson.loads(frame)
    if data.get("type") != "message.created":
        return None
    body = data["message"]["body"]
    return int(body.split(" ", 1)[0]) if body and body[0].isdigit() else None


def _stamp_from_bare(frame: str | bytes) -> int | None:
    text = frame if isinstance(frame, str) else frame.decode()
    return int(text.split(" ", 1)[0]) if text[:1].isdigit() else None


async def _connect(url: str, token: str | None) -> websockets.ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await websockets.connect(
        url,
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=60,
        ping_interval=None,
    )


async def _receive(
    connection: websockets.ClientConnection, receiver: Receiver, system: str
) -> None:
    parse = _stamp_from_am if system == "am" else _stamp_from_bare
    try:
        async for frame in connection:
            stamp = parse(frame)
            if stamp is not None:
                receiver.latencies_ns.append(time.time_ns() - stamp)
                receiver.seen += 1
    except websockets.ConnectionClosed:
        return


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


async def run(args: argparse.Namespace) -> None:
    tokens = json.loads(args.tokens) if args.tokens else {}
    receivers: list[Receiver] = []
    tasks = []
    connections = []
    for index in range(args.receivers):
        connection = await _connect(args.url, tokens.get("receiver"))
        if args.system == "am":
            await connection.send(json.dumps({"op": "subscribe", "candidate": args.candidate}))
            await connection.recv()  # the ack
        receiver = Receiver()
        receivers.append(receiver)
        connections.append(connection)
        tasks.append(asyncio.create_task(_receive(connection, receiver, args.system)))
        if index % 100 == 99:
            await asyncio.sleep(0)
    publisher = await _connect(args.url, tokens.get("publisher"))
    print(json.dumps({"event": "connected", "receivers": len(receivers)}), flush=True)

    for rate in [float(r) for r in args.rates.split(",")]:
        for receiver in receivers:
            receiver.latencies_ns.clear()
            receiver.seen = 0
        interval = 1.0 / rate
        count = max(1, int(rate * args.step_seconds))
        started = time.perf_counter()
        for n in range(count):
            target = started + n * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = f"{time.time_ns()} bench message {n}"
            if args.system == "am":
                await publisher.send(
                    json.dumps({"op": "send", "thread": args.thread, "body": body})
                )
            else:
                await publisher.send(body)
        sent_for = time.perf_counter() - started
        await asyncio.sleep(args.drain_seconds)
        latencies = [x for r in receivers for x in r.latencies_ns]
        expected = count * len(receivers)
        delivered = sum(r.seen for r in receivers)
        print(
            json.dumps(
                {
                    "event": "step",
                    "rate": rate,
                    "sent": count,
                    "send_seconds": round(sent_for, 3),
                    "expected": expected,
                    "delivered": delivered,
                    "delivered_per_second": round(delivered / max(sent_for, 1e-9), 1),
                    "p50_ms": round(_percentile(latencies, 0.50), 2),
                    "p99_ms": round(_percentile(latencies, 0.99), 2),
                    "mean_ms": round(statistics.fmean(latencies) / 1e6, 2) if latencies else None,
                }
            ),
            flush=True,
        )
        p99 = _percentile(latencies, 0.99)
        if delivered < expected * 0.99 or p99 > args.p99_limit_ms:
            break
    for task in tasks:
        task.cancel()
    for connection in [*connections, publisher]:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=["am", "bare"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--rates", default="5,10,20,40,80,160,320")
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--drain-seconds", type=float, default=1.0)
    parser.add_argument("--p99-limit-ms", type=float, default=100.0)
    parser.add_argument("--tokens", default="")
    parser.add_argument("--candidate", default="c1")
    parser.add_argument("--thread", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
