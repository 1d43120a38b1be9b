"""The Starlette application and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from channels.backends import create_broker, create_presence
from channels.connection import ConnectionLimits
from channels.hub import Hub
from mailer.transport import Transport, create_transport
from mailer.worker import AlertWorker, WorkerOptions
from server.domain.actions import Messaging
from server.domain.alert_access import AlertAccess
from server.domain.alerting import AlertDerivation
from server.domain.eventlog import SqlEventSource, prune_events
from server.domain.fanout import BrokerSink
from server.domain.provisioning import Provisioning
from server.domain.ratelimit import SendRateLimiter
from server.edge import api, api_notifications, api_provisioning, health, openapi, pages, ws
from server.edge.guard import ConnectionGuard
from server.edge.http import http_exception
from server.edge.metrics import Metrics
from server.edge.middleware import RequestMiddleware
from server.edge.services import Realtime, Services
from server.settings import Settings
from server.watchdog import LoopWatchdog
from storage import migrate
from storage.database import Database

log = logging.getLogger("agency_messaging")


async def prepare_schema(db: Database, settings: Settings, auto_migrate: bool | None) -> None:
    """The embedded SQLite default migrates itself; any other database must be migrated."""
    if auto_migrate is None:
        auto_migrate = settings.database_is_default
    if auto_migrate:
        await migrate.upgrade(db)
    else:
        await migrate.check_up_to_date(db)


PRUNE_EVERY_SECONDS = 3600.0
PRUNE_FIRST_AFTER_SECONDS = 60.0


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancels a background task and waits for it, before what it uses is closed."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _prune_forever(db: Database, settings: Settings) -> None:
    await asyncio.sleep(PRUNE_FIRST_AFTER_SECONDS)  # not in the way of start-up
    while True:
        try:
            removed = await prune_events(db, settings.event_retention_days)
            if removed:
                log.info(
                    "Pruned %d events older than %d days.", removed, settings.event_retention_days
                )
        except Exception:
            log.warning("Pruning the event log failed; retrying in an hour.")
        await asyncio.sleep(PRUNE_EVERY_SECONDS)


async def _start_inbound(
    stack: AsyncExitStack, services: Services, address: tuple[str, int]
) -> None:
    from server import inbound

    count = services.metrics.email_replies.labels
    reply_receiver = inbound.receiver(
        services.settings,
        services.db,
        services.messaging,
        services.send_limiter,
        count=lambda outcome: count(outcome).inc(),
    )
    server = await inbound.listen(services.settings, reply_receiver, *address)
    services.extras["reply_receiver"] = reply_receiver

    async def close() -> None:
        server.close()
        # Sessions mid-message get a moment; the listener is closed either way.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    stack.push_async_callback(close)


def alert_worker(
    settings: Settings,
    db: Database,
    *,
    transport: Transport | None = None,
    options: WorkerOptions | None = None,
    count: Callable[[str], None] = lambda outcome: None,
    derivation: AlertDerivation | None = None,
) -> AlertWorker:
    """The alert worker as `serve` and `worker` run it, answering access through the domain
    and deciding new alerts from the event log (server.domain.alerting). Presence plays no
    part in alerts: an open socket is not reading."""
    derivation = derivation or AlertDerivation(db, settings.email_delay_seconds)
    return AlertWorker(
        db,
        transport
        or create_transport(settings.smtp_url, settings.mail_dir, settings.smtp_timeout_seconds),
        AlertAccess(),
        secret=settings.secret,
        public_url=settings.public_url,
        link=settings.link,
        sender=settings.sender,
        options=options,
        count=count,
        derive=derivation.full_batch,
        reply_to=_reply_to(settings),
    )


def _reply_to(settings: Settings) -> Callable[[int, int], str] | None:
    """Each alert's Reply-To, when replies by email are on (AM_REPLY_DOMAIN)."""
    from server.inbound import reply_addresses

    addresses = reply_addresses(settings)
    return None if addresses is None else addresses.address


def create_app(
    settings: Settings,
    *,
    auto_migrate: bool | None = None,
    limits: ConnectionLimits | None = None,
    worker_options: WorkerOptions | None = None,
    freeze_after_start: bool = False,
    inbound: tuple[str, int] | None = None,
) -> Starlette:
    """The app. `freeze_after_start` is for a process that serves this one app for its
    whole life (`agency-messaging serve`); an app made and dropped again and again (tests)
    must not freeze what it leaves behind. `inbound` (host, port) also runs the receiver of
    replies by email in this process (server.inbound)."""
    metrics = Metrics()
    refused = metrics.connections_refused.labels
    guard = ConnectionGuard(settings.guard_limits, on_refused=lambda why: refused(why).inc())
    metrics.pending_handshakes.set_function(lambda: guard.pending)
    metrics.gc_frozen.set_function(gc.get_freeze_count)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            watchdog = LoopWatchdog(
                on_lag=metrics.loop_lag.observe, on_blocked=metrics.loop_blocked.inc
            )
            watchdog.start()
            stack.callback(watchdog.stop)
            db = Database(settings.database_url)
            stack.push_async_callback(db.close)
            metrics.count_sql_statements(lambda: db.statements)
            await prepare_schema(db, settings, auto_migrate)
            broker = create_broker(settings.broker_url)
            presence = create_presence(settings.broker_url)
            hub = Hub(broker, presence, SqlEventSource(db))
            hub.on_event_dispatched = lambda n: metrics.ws_events.labels("candidate").inc(n)
            await hub.start()
            stack.push_async_callback(hub.close)
            sink = BrokerSink(broker)
            count_email = metrics.emails.labels
            alerts = AlertDerivation(
                db,
                settings.email_delay_seconds,
                count=lambda n: count_email("queued").inc(n),
            )
            app.state.services = Services(
                settings=settings,
                db=db,
                messaging=Messaging(db, sink),
                alerts=alerts,
                provisioning=Provisioning(db, sink),
                metrics=metrics,
                send_limiter=SendRateLimiter(settings.send_rate_per_minute),
                realtime=Realtime(hub, broker, presence, limits or ConnectionLimits()),
                guard=guard,
                extras={"readiness": {"broker": broker.ping}},
            )
            if inbound is not None:
                await _start_inbound(stack, app.state.services, inbound)
            jobs = [("event-pruner", _prune_forever(db, settings))]
            if settings.run_email_worker:
                worker = alert_worker(
                    settings,
                    db,
                    options=worker_options,
                    count=lambda outcome: count_email(outcome).inc(),
                    derivation=alerts,
                )
                jobs.append(("email-worker", worker.run_forever()))
            for name, job in jobs:
                stack.push_async_callback(_stop, asyncio.create_task(job, name=name))
            if freeze_after_start:
                # What start-up built (modules, compiled statements, settings) lives as long
                # as the process: kept out of the collector's reach, a full collection no
                # longer walks it, and requests no longer pay for that in their tail latency.
                gc.collect()
                gc.freeze()
            yield

    routes = [
        *health.routes,
        *openapi.routes,
        *api.routes,
        *api_provisioning.routes,
        *ws.routes,
        *api_notifications.routes,
        *pages.routes(settings),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestMiddleware, metrics=metrics)],
        exception_handlers={HTTPException: http_exception},
        lifespan=lifespan,
    )
    app.state.guard = guard  # the listener's protocol shares it (server.edge.serving)
    return app
