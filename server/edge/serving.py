"""How a process listens: uvicorn, behind the connection guard, with this server's
WebSocket settings. Used by `agency-messaging serve` and by the tests' live servers."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn
from starlette.applications import Starlette

from channels.protocol import MAX_FRAME_BYTES
from server.edge.direct import DirectWebSocketProtocol
from server.edge.guard import ConnectionGuard, guarded_protocol, networks_text

# Messages that uvicorn logs for a client's fault as if it were the server's (ERROR with a
# traceback): they say nothing about the server's health, so they are logged at INFO.
CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})


class ClientFaultFilter(logging.Filter):
    """Turns uvicorn's error records for client faults into plain INFO lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in CLIENT_FAULTS:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_faults() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultFilter) for f in logger.filters):
        logger.addFilter(ClientFaultFilter())


def uvicorn_config(app: Starlette, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration for `app` (made by server.app.create_app)."""
    quiet_client_faults()
    guard: ConnectionGuard = app.state.guard
    trusted = networks_text(guard.limits.trusted_proxies)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": guarded_protocol(guard),
        # uvicorn's "websockets-sansio", writing fan-out frames straight to the socket.
        "ws": DirectWebSocketProtocol,
        "access_log": False,  # our own access log leaves out query strings and tokens
        # X-Forwarded-For and -Proto are believed from these peers only.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted,
        "log_config": None,
        "ws_max_size": MAX_FRAME_BYTES,  # larger frames close the socket with 1009
        # Frames are small JSON, encoded once for every recipient; compressing them again
        # per connection would cost more CPU than the bytes it saves.
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "timeout_graceful_shutdown": 10,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
