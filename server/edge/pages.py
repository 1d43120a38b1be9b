"""The browser pages: the demo host ATS and the messaging client, served from web/."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.settings import Settings

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(web_dir: Path, name: str) -> Route:
    path = web_dir / name

    async def endpoint(request: Request) -> Response:
        return FileResponse(path, media_type="text/html", headers=SECURITY_HEADERS)

    return endpoint  # type: ignore[return-value]


class _SecureStatic:
    """Static files with the same security headers as the pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (k.lower().encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k != "Cache-Control"
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def routes(settings: Settings) -> list[Route | Mount]:
    """The browser client's files, always (a host ATS embeds them); the demo host's pages
    and login only in demo mode (`AM_DEMO=1`): a production server serves no sign-in page."""
    web_dir = settings.web_dir
    static = Mount(
        "/static", app=_SecureStatic(StaticFiles(directory=web_dir / "static")), name="static"
    )
    if not settings.demo:
        return [static]
    return [
        Route("/", _page(web_dir, "index.html"), methods=["GET"]),  # type: ignore[arg-type]
        Route("/candidates/{cand}", _page(web_dir, "candidate.html"), methods=["GET"]),  # type: ignore[arg-type]
        Route("/login", _page(web_dir, "login.html"), methods=["GET"]),  # type: ignore[arg-type]
        static,
    ]
