"""The per-process objects that endpoints share, built and closed by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from channels.connection import ConnectionLimits
from channels.hub import Hub
from channels.interfaces import Broker, Presence
from server.domain.actions import Messaging
from server.domain.alerting import AlertDerivation
from server.domain.provisioning import Provisioning
from server.domain.ratelimit import SendRateLimiter
from server.edge.guard import ConnectionGuard
from server.edge.metrics import Metrics
from server.settings import Settings
from storage.database import Database


@dataclass
class Realtime:
    hub: Hub
    broker: Broker
    presence: Presence
    limits: ConnectionLimits


@dataclass
class Services:
    settings: Settings
    db: Database
    messaging: Messaging
    alerts: AlertDerivation  # decides new messages' alerts (the worker runs it)
    provisioning: Provisioning
    metrics: Metrics
    send_limiter: SendRateLimiter
    realtime: Realtime
    guard: ConnectionGuard
    extras: dict[str, Any]


def services(conn: HTTPConnection) -> Services:
    found: Services = conn.app.state.services
    return found
