"""/metrics counts messages sent and deleted on both transports (docs/api.md, section 12):
a delete over REST moves `am_messages_deleted_total{transport="rest"}`, one over the
WebSocket the `ws` series, and a refused delete moves neither."""

from __future__ import annotations

from tests.support.metrics import metric_value
from tests.support.realtime import WsClient
from tests.support.world import Api

DELETED = "am_messages_deleted_total"


async def _deleted(api: Api) -> dict[str, float]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    return {t: metric_value(response.text, DELETED, transport=t) for t in ("rest", "ws")}


async def _message(api: Api) -> int:
    thread = await api.open_thread("acme", "ann", "c1", {"private": False})
    message = await api.send("acme", "ann", thread["id"], "to be deleted")
    message_id: int = message["id"]
    return message_id


async def test_a_rest_delete_is_counted(world: Api) -> None:
    assert await _deleted(world) == {"rest": 0.0, "ws": 0.0}
    message_id = await _message(world)
    response = await world.delete("acme", "ann", f"/api/v1/messages/{message_id}")
    assert response.status_code == 204, response.text
    assert await _deleted(world) == {"rest": 1.0, "ws": 0.0}


async def test_a_refused_rest_delete_is_not_counted(world: Api) -> None:
    message_id = await _message(world)
    # Someone else's message (403), and one the caller cannot see (404).
    response = await world.delete("acme", "mem", f"/api/v1/messages/{message_id}")
    assert response.status_code == 403, response.text
    response = await world.delete("other", "omem", f"/api/v1/messages/{message_id}")
    assert response.status_code == 404, response.text
    assert await _deleted(world) == {"rest": 0.0, "ws": 0.0}


async def test_a_websocket_delete_is_counted_apart(world: Api, live: str) -> None:
    message_id = await _message(world)
    client = await WsClient.connect(live, world.token("acme", "ann"))
    try:
        answer = await client.request("delete", message=message_id)
        assert answer["type"] == "ack", answer
    finally:
        await client.close()
    assert await _deleted(world) == {"rest": 0.0, "ws": 1.0}
