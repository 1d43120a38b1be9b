"""Prometheus metrics, one registry per app so that several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


TRANSPORTS = ("rest", "ws")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "am_http_requests", "HTTP requests served.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "am_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.messages_sent = Counter(
            "am_messages_sent", "Messages stored, by transport.", ["transport"], registry=r
        )
        self.messages_deleted = Counter(
            "am_messages_deleted", "Messages deleted, by transport.", ["transport"], registry=r
        )
        for transport in TRANSPORTS:  # each series shows from the start, at 0
            self.messages_deleted.labels(transport)
        self.ws_connections = Gauge("am_ws_connections", "Open WebSocket connections.", registry=r)
        self.ws_events = Counter(
            "am_ws_events_sent", "Events queued to WebSocket connections.", ["type"], registry=r
        )
        self.ws_closed = Counter(
            "am_ws_closed", "WebSocket connections closed, by close code.", ["code"], registry=r
        )
        self.sql_statements = Gauge(
            "am_sql_statements",
            "SQL statements sent to the database by this process since it started.",
            registry=r,
        )
        self.connections_refused = Counter(
            "am_connections_refused",
            "Connections refused or dropped before their request or handshake completed, "
            "by reason.",
            ["reason"],
            registry=r,
        )
        self.pending_handshakes = Gauge(
            "am_pending_handshakes",
            "Connections whose request head has not fully arrived yet.",
            registry=r,
        )
        self.loop_lag = Histogram(
            "am_event_loop_lag_seconds",
            "How late the event loop ran a timer, measured four times a second.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.loop_blocked = Counter(
            "am_event_loop_blocked",
            "Times the event loop was blocked for over a second (each is logged with what ran).",
            registry=r,
        )
        self.emails = Counter("am_emails", "Email alerts, by outcome.", ["outcome"], registry=r)
        self.email_replies = Counter(
            "am_email_replies",
            "Replies by email received in this process, by outcome (posted, answered, ...).",
            ["outcome"],
            registry=r,
        )
        self.gc_frozen = Gauge(
            "am_gc_frozen_objects",
            "Objects kept out of Python's garbage collector after start-up (gc.freeze).",
            registry=r,
        )

    def count_sql_statements(self, read: Callable[[], int]) -> None:
        self.sql_statements.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
