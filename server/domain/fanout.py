"""The event sink of a serving process: committed domain events become broker envelopes.

Each candidate event is encoded once, with its audience, however many sockets receive it.
A publish that fails loses nothing: the event is in the log, and every subscribed process
catches up from it (on reconnect, on a seq gap, or on the hub's periodic sweep).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from channels import envelope, protocol
from channels.interfaces import Broker, BrokerError
from server.domain import views
from server.domain.events import (
    AccessRevoked,
    CandidateEvent,
    DomainEvent,
    ThreadRead,
    UnreadTouched,
    UserErased,
)

log = logging.getLogger("agency_messaging.fanout")


def to_envelopes(events: Sequence[DomainEvent]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for event in events:
        if isinstance(event, CandidateEvent):
            frame = protocol.candidate_event(
                event.type,
                event.candidate_id,
                event.seq,
                event.thread.id,
                event.message_id,
                event.message,
            )
            message: envelope.Envelope = envelope.EventEnvelope(
                event.candidate_pk, event.seq, event.audience, frame
            )
            out.append((envelope.candidate_channel(event.candidate_pk), envelope.encode(message)))
        elif isinstance(event, UnreadTouched):
            if event.user_pks:
                message = envelope.UnreadEnvelope(
                    event.org_pk,
                    event.candidate_pk,
                    event.thread_id,
                    event.user_pks,
                    envelope.UNREAD_CREATED if event.new_message_id else envelope.UNREAD_CHANGED,
                    event.new_message_id,
                )
                out.append((envelope.UNREAD_CHANNEL, envelope.encode(message)))
        elif isinstance(event, ThreadRead):
            if event.named or event.team:
                out.append((envelope.candidate_channel(event.candidate_pk), _read_envelope(event)))
        elif isinstance(event, AccessRevoked):
            message = envelope.RevokedEnvelope(event.candidate_pk, event.user_pks, event.erased)
            out.append((envelope.candidate_channel(event.candidate_pk), envelope.encode(message)))
            if event.user_pks:
                # Their counts drop with the access: refresh their blue dots.
                touched = envelope.UnreadEnvelope(
                    event.org_pk, event.candidate_pk, 0, event.user_pks
                )
                out.append((envelope.UNREAD_CHANNEL, envelope.encode(touched)))
        elif isinstance(event, UserErased):
            # Every process closes that user's sockets: its sessions are over.
            signed_out = envelope.SignedOutEnvelope(event.org_pk, event.user_pk)
            out.append((envelope.UNREAD_CHANNEL, envelope.encode(signed_out)))
    return out


def _read_envelope(event: ThreadRead) -> bytes:
    """At most two frames per read, whoever and however many receive them."""
    at = views.iso(event.at)

    def frame(reader: dict[str, Any] | None, users: frozenset[int]) -> str:
        if not users:
            return ""
        return protocol.thread_read(
            event.candidate_id, event.thread_id, reader, event.message_id, at
        )

    message = envelope.ReadEnvelope(
        event.candidate_pk,
        event.named,
        event.team,
        frame(event.reader, event.named),
        frame(None, event.team),
    )
    return envelope.encode(message)


class BrokerSink:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        items = to_envelopes(events)
        if not items:
            return
        try:
            await self.broker.publish_many(items)
        except (BrokerError, OSError, TimeoutError) as error:
            log.warning(
                "Publishing %d events failed (%s); subscribers catch up from the log.",
                len(items),
                type(error).__name__,
            )
