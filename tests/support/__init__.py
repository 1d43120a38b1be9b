"""Helpers of the test suite: the test world and its API client, live servers, WebSocket
clients, the multi-process deployment, SMTP, the browser, and the oracle's model. Test
modules import from here, never from each other."""
