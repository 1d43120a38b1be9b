"""The `agency-messaging` command: migrate, serve, demo, worker, inbound, send-test-email."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from server.settings import ConfigError, Settings, env_flag
from storage import migrate
from storage.database import Database, default_sqlite_url

DEMO_ENV = "demo.env"  # the demo's secrets, kept under AM_VAR_DIR (default ./var)


def _demo_mode(env: dict[str, str], command: str) -> bool:
    """The `demo` command, or `AM_DEMO=1`: only then may the demo's own secrets be used."""
    return command == "demo" or env_flag(env, "AM_DEMO", False)


def _local_url(host: str, port: int) -> str:
    """The address a browser on this machine opens to reach `host:port`."""
    if host in ("", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):  # noqa: S104
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _settings(command: str, host: str | None = None, port: int | None = None) -> Settings:
    env = dict(os.environ)
    demo = _demo_mode(env, command)
    missing = [k for k in ("AM_SECRET", "AM_SERVICE_TOKEN") if not env.get(k, "").strip()]
    if not demo:
        # A production server never falls back to the demo's secrets under var/.
        if missing:
            raise ConfigError(
                f"{missing[0]} must be set (outside demo mode, AM_SECRET and AM_SERVICE_TOKEN "
                "are required; for the demo, set AM_DEMO=1)."
            )
        return Settings.from_env(env)
    from server.demo import ensure_demo_env

    env["AM_DEMO"] = "1"
    if missing:
        var_dir = Path(env.get("AM_VAR_DIR", "").strip() or "var")
        for key, value in ensure_demo_env(var_dir / DEMO_ENV).items():
            if not env.get(key, "").strip():
                env[key] = value
    # Links printed by `demo` and sent in emails go to the port actually served, unless
    # AM_PUBLIC_URL says otherwise (a proxy in front, another host name).
    if port is not None and not env.get("AM_PUBLIC_URL", "").strip():
        env["AM_PUBLIC_URL"] = _local_url(host or "", port)
    return Settings.from_env(env)


def _logging() -> None:
    logging.basicConfig(
        level=os.environ.get("AM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # At DEBUG, the websockets library traces every frame and handshake header (tokens,
    # cookies, message bodies) through uvicorn's logger: never let a verbose level reach it.
    for name in ("uvicorn.error", "websockets"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))
    from server.edge.serving import quiet_client_faults

    quiet_client_faults()


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
        print(f"Schema is at revision {await migrate.current_revision(db)}.")
    finally:
        await db.close()


async def _check_schema(settings: Settings) -> None:
    from server.app import prepare_schema

    db = Database(settings.database_url)
    try:
        await prepare_schema(db, settings, auto_migrate=None)
    finally:
        await db.close()


def _serve(
    settings: Settings, host: str, port: int, inbound: tuple[str, int | None] = ("", None)
) -> int:
    import uvicorn

    from server.app import create_app
    from server.edge.serving import uvicorn_config

    try:
        asyncio.run(_check_schema(settings))
    except migrate.SchemaOutOfDate as error:
        print(f"agency-messaging: {error}", file=sys.stderr)
        return 2
    inbound_host, inbound_port = inbound
    if inbound_port is not None and not settings.reply_domain:
        print("agency-messaging: --inbound-port needs AM_REPLY_DOMAIN.", file=sys.stderr)
        return 2
    app = create_app(
        settings,
        auto_migrate=False,
        freeze_after_start=True,
        inbound=(inbound_host, inbound_port) if inbound_port is not None else None,
    )
    config = uvicorn_config(app, host, port)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT (sockets closed with 1012, requests
    # in flight finished), then re-raises the signal to the handler that was there before.
    # This one makes that graceful stop an ordinary exit with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
    return 0


def _demo(settings: Settings, host: str, inbound_port: int | None) -> int:
    from server.demo import provision_demo

    asyncio.run(_check_schema(settings))
    links = asyncio.run(provision_demo(settings))
    print("\nAgency Messaging demo: open a link to sign in as that user.\n")
    for name, role, link in links:
        print(f"  {name} ({role}):\n    {link}\n")
    if inbound_port is not None and settings.reply_domain:
        where = _local_url(host, inbound_port).removeprefix("http://")
        print(
            f"Replies by email: alerts are written to {settings.mail_dir}/ with a Reply-To "
            f"@{settings.reply_domain}; send a reply over SMTP to {where}, e.g.\n"
            f"    swaks --server {where} --from <the alert's To> --to <its Reply-To> "
            "--body 'Thanks!'\n"
        )
    return 0


def _inbound(settings: Settings, host: str, port: int, lmtp: bool) -> int:
    from server.inbound import run_inbound

    if not settings.reply_domain:
        print("agency-messaging: inbound needs AM_REPLY_DOMAIN.", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_inbound(settings, host, port, lmtp=lmtp))
    except migrate.SchemaOutOfDate as error:
        print(f"agency-messaging: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"agency-messaging: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 1
    return 0


async def _worker(settings: Settings) -> None:
    """The alert worker alone, for deployments that run it apart from `serve`."""
    from server.app import alert_worker

    db = Database(settings.database_url)
    try:
        await migrate.check_up_to_date(db)
        worker = alert_worker(settings, db)
        print(f"Sending email alerts through {worker.transport.description}.", flush=True)
        await worker.run_forever()
    finally:
        await db.close()


async def _send_test_email(settings: Settings, address: str) -> None:
    from email.message import EmailMessage

    from mailer.transport import create_transport

    transport = create_transport(
        settings.smtp_url, settings.mail_dir, settings.smtp_timeout_seconds
    )
    message = EmailMessage()
    message["Subject"] = "Agency Messaging test email"
    message["From"] = settings.sender
    message["To"] = address
    message.set_content(
        f"This email checks the alert configuration of {settings.public_url}.\n"
        "If you can read it, email alerts will reach people.\n"
    )
    await transport.send(message)
    print(f"Sent a test email to {address} through {transport.description}.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agency-messaging", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="bring the database schema up to date")
    serve = commands.add_parser("serve", help="serve HTTP and WebSocket")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--inbound-port",
        type=int,
        help="also receive replies by email (SMTP) on this port, in this process",
    )
    serve.add_argument(
        "--inbound-host",
        default="127.0.0.1",
        help="the address the receiver of --inbound-port listens on (only your mail server "
        "should reach it)",
    )
    demo = commands.add_parser("demo", help="provision the demo org and print login links")
    demo.add_argument("--host", default="127.0.0.1", help="the host `serve` listens on")
    demo.add_argument("--port", type=int, default=8000, help="the port `serve` listens on")
    demo.add_argument("--inbound-port", type=int, help="the port replies by email go to")
    inbound = commands.add_parser("inbound", help="receive replies to alerts (SMTP or LMTP)")
    inbound.add_argument("--host", default="127.0.0.1")
    inbound.add_argument("--port", type=int, default=2525)
    inbound.add_argument("--lmtp", action="store_true", help="speak LMTP instead of SMTP")
    commands.add_parser("worker", help="send email alerts (without serving)")
    test_email = commands.add_parser("send-test-email", help="check the email configuration")
    test_email.add_argument("address")
    args = parser.parse_args(argv)
    _logging()
    if args.command == "migrate":
        # Needs only the database: no secrets, so that it runs before anything is configured.
        url = os.environ.get("AM_DATABASE_URL") or default_sqlite_url(
            Path(os.environ.get("AM_VAR_DIR", "var"))
        )
        asyncio.run(_migrate(url))
        return 0
    try:
        # Links go to the address served: `serve`'s and `demo`'s, not the receiver's port.
        served = args.command in ("serve", "demo")
        settings = _settings(
            args.command,
            args.host if served else None,
            args.port if served else None,
        )
    except ConfigError as error:
        print(f"agency-messaging: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings, args.host, args.port, (args.inbound_host, args.inbound_port))
    if args.command == "inbound":
        return _inbound(settings, args.host, args.port, args.lmtp)
    if args.command == "worker":
        asyncio.run(_worker(settings))
        return 0
    if args.command == "send-test-email":
        from mailer.transport import TransportError

        try:
            asyncio.run(_send_test_email(settings, args.address))
        except TransportError as error:
            print(f"agency-messaging: {error}", file=sys.stderr)
            return 1
        return 0
    return _demo(settings, args.host, args.inbound_port)


if __name__ == "__main__":
    sys.exit(main())
