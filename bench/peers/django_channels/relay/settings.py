"""Minimal settings: no database, no apps but Channels, the channel layer from the environment.

PEER_REDIS_URL set: channels_redis's layer (PEER_LAYER: "pubsub", the default, for
RedisPubSubChannelLayer, or "core" for RedisChannelLayer); unset: the in-memory layer
(one process only). Everything else is the layers' defaults (for RedisChannelLayer: a
capacity of 100 messages per channel, past which group messages are dropped).
"""

from __future__ import annotations

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
ASGI_APPLICATION = "relay.asgi.application"
LOGGING_CONFIG = None

_redis = os.environ.get("PEER_REDIS_URL")
_layer = os.environ.get("PEER_LAYER", "pubsub")
if _redis:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": (
                "channels_redis.pubsub.RedisPubSubChannelLayer"
                if _layer == "pubsub"
                else "channels_redis.core.RedisChannelLayer"
            ),
            # redis-py (6+) caps a pool at 100 connections and raises past that, and the
            # core layer takes one per group_add/group_send in flight: hundreds of sockets
            # joining at once exhaust it. A bigger pool is what a deployment would set.
            "CONFIG": {"hosts": [{"address": _redis, "max_connections": 1000}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
