"""The relay consumer: JSON text frames in, the bare body out.

{"join": room}                 join the group `room`; answered with {"joined": room}
{"room": room, "body": body}   group_send body to every member of `room`; each member
                               receives `body` as a text frame
"""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer


class RelayConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.rooms: list[str] = []
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            return
        data = json.loads(text_data)
        if "join" in data:
            room = str(data["join"])
            await self.channel_layer.group_add(room, self.channel_name)
            self.rooms.append(room)
            await self.send(text_data=json.dumps({"joined": room}))
        else:
            await self.channel_layer.group_send(
                str(data["room"]), {"type": "relay", "body": data["body"]}
            )

    async def relay(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["body"])

    async def disconnect(self, code: int) -> None:
        for room in self.rooms:
            await self.channel_layer.group_discard(room, self.channel_name)
