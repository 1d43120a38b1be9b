"""Which browser origins may use the socket and cookie-authenticated requests."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from server.settings import Settings

_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def own_origin(scheme: str, host: str | None) -> str | None:
    """The server's own origin as the browser sees it: scheme and Host of the request."""
    if not host:
        return None
    return f"{_HTTP_SCHEME.get(scheme, scheme)}://{host}".lower()


def normalise(origin: str) -> str | None:
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(
    origin: str, *, scheme: str, host: str | None, allowed: frozenset[str], public_url: str
) -> bool:
    """Exact comparison only: no prefix, suffix or substring ever matches."""
    candidate = normalise(origin)
    if candidate is None:
        return False
    own = {own_origin(scheme, host), normalise(public_url)}
    return candidate in own or candidate in allowed


def connection_origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    """Whether the Origin header of a request or WebSocket handshake names an origin allowed
    by the settings (or the server's own). False without an Origin header: whether one is
    required is the caller's decision."""
    origin = conn.headers.get("origin")
    if origin is None:
        return False
    return origin_allowed(
        origin,
        scheme=conn.url.scheme,
        host=conn.headers.get("host"),
        allowed=settings.allowed_origins,
        public_url=settings.public_url,
    )
