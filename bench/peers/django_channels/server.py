"""Django Channels relay with rooms, served by uvicorn (one process per port).

    python server.py --port 8000 [--redis-url redis://…] [--layer pubsub|core]

WebSocket at ws://127.0.0.1:<port>/ws/; protocol in relay/consumers.py. With --redis-url the
processes share groups through channels_redis (RedisPubSubChannelLayer by default, or
RedisChannelLayer with --layer core); without it, the in-memory layer (one process).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--layer", choices=["pubsub", "core"], default="pubsub")
    args = parser.parse_args()
    if args.redis_url:
        os.environ["PEER_REDIS_URL"] = args.redis_url
    os.environ["PEER_LAYER"] = args.layer
    os.environ["DJANGO_SETTINGS_MODULE"] = "relay.settings"
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    import uvicorn

    uvicorn.run(
        "relay.asgi:application",
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
